"""Functions of the albert_text task: one text file as one document, its words and bytes counted."""

from __future__ import annotations

import re
from pathlib import Path


def load_text_file(text_file: str | None = None, **_: object):
    """The file named by --metadata '{"text_file": ...}' as a one-row test split."""
    import datasets

    if not text_file:
        usage = """--metadata '{"text_file": "path/to/text.txt"}'"""
        raise ValueError(f"albert_text needs the file to score: {usage}")
    text = Path(text_file).read_bytes().decode("utf-8").removeprefix("\ufeff")
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": [text]})})


def doc_to_target(doc: dict) -> str:
    return doc["text"]


def process_results(doc: dict, results: list) -> dict:
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"].strip()))
    n_bytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
