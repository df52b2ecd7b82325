"""Tokenizers: byte-level BPE round trips, the character vocabulary, pretrained files, saving."""

from __future__ import annotations

import pickle
import random
import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from albert_gpt.config import TokenizerConfig
from albert_gpt.data.sources import builtin_documents
from albert_gpt.data.tokenizer import UNKNOWN_CHAR, TextTokenizer, build_tokenizer
from albert_gpt.errors import DataError

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def bpe() -> TextTokenizer:
    cfg = TokenizerConfig(type="bpe", vocab_size=600)
    return build_tokenizer(cfg, builtin_documents()[:30], progress=False)


def random_unicode(rng: random.Random, n: int) -> str:
    """Any scalar value: every plane, controls, combining marks; never a lone surrogate."""
    chars = []
    while len(chars) < n:
        code = rng.choice(
            [rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0x10000), rng.randrange(0x110000)]
        )
        if not 0xD800 <= code <= 0xDFFF:
            chars.append(chr(code))
    return "".join(chars)


def test_bpe_round_trip_random_unicode(bpe):
    """decode(encode(text)) == text for random Unicode text, character by character."""
    rng = random.Random(0)
    for _ in range(50):
        text = random_unicode(rng, rng.randrange(1, 200))
        assert bpe.decode(bpe.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n\n\n",
        "  \t \r\n  x  ",
        "emoji 😀👩🏽‍🚀🇫🇷 end",
        "中文和日本語のテキスト、한국어",
        "\u00a0nbsp\u200bzero width\ufeffbom",
        "\x00\x01 controls \x7f",
        "e\u0301 combining",
        "\ufffd",
        "literal <|endoftext|> inside",
        "x" * 5000,
    ],
)
def test_bpe_round_trip_edge_cases(bpe, text):
    """Round trip on emojis (with joiners), CJK, whitespace runs, controls and the eot spelling."""
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_vocabulary_and_eot(bpe):
    """The vocabulary has the requested size, the eot token is one id, and text spelling the eot
    token is encoded as ordinary text, never as that id."""
    assert bpe.vocab_size == 600
    assert bpe.eot_token == EOT and 0 <= bpe.eot_id < 600
    assert bpe.eot_id not in bpe.encode(f"a {EOT} b")
    assert bpe.decode([bpe.eot_id]) == EOT


def test_bpe_merges_compress_training_text(bpe):
    """Merges learned from the corpus make its text shorter than its UTF-8 bytes."""
    text = builtin_documents()[0]
    assert len(bpe.encode(text)) < 0.6 * len(text.encode("utf-8"))


def test_bpe_save_load_same_ids(tmp_path, bpe):
    """A saved tokenizer.json (standard tokenizers format) loads back to the same encoding."""
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    again = TextTokenizer.load(path)
    text = "Some text, with 中文 and <|endoftext|>."
    assert again.encode(text) == bpe.encode(text)
    assert again.eot_id == bpe.eot_id
    assert Tokenizer.from_file(str(path)).get_vocab_size() == 600


def test_pickle_keeps_special_token_handling(bpe):
    """A pickled copy (as datasets.map sends to worker processes) still treats the eot spelling
    as text: tokenizers' own pickling would drop that setting."""
    copy = pickle.loads(pickle.dumps(bpe))
    text = f"x {EOT} y"
    assert copy.encode(text) == bpe.encode(text) and copy.eot_id not in copy.encode(text)


def test_char_vocabulary_from_train_only():
    """char: sorted training characters, then eot, then the unknown id; unseen characters map to
    the unknown id and decode to U+FFFD."""
    tok = build_tokenizer(TokenizerConfig(type="char"), ["hello", "world"], progress=False)
    chars = sorted(set("helloworld"))
    assert tok.vocab_size == len(chars) + 2
    assert tok.encode("hold") == [chars.index(c) for c in "hold"]
    assert tok.eot_id == len(chars)
    assert tok.encode("hz!") == [chars.index("h"), len(chars) + 1, len(chars) + 1]
    assert tok.decode(tok.encode("hz")) == "h" + UNKNOWN_CHAR
    assert tok.decode([tok.eot_id]) == EOT


def test_char_round_trip_and_save_load(tmp_path):
    """char round trip on text drawn from its vocabulary (astral characters included), also after load."""
    corpus = "ab c\n😀 中\t"
    tok = build_tokenizer(TokenizerConfig(type="char"), [corpus], progress=False)
    rng = random.Random(1)
    text = "".join(rng.choice(corpus) for _ in range(500))
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tokenizer.json")
    again = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size


def test_char_decode_out_of_range_id():
    """An id outside the vocabulary is a DataError naming it."""
    tok = build_tokenizer(TokenizerConfig(type="char"), ["ab"], progress=False)
    with pytest.raises(DataError, match="token id 99 is outside the vocabulary of 4"):
        tok.decode([0, 99])


def word_level_file(tmp_path, specials: list[str]):
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", *specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    path = tmp_path / "pretrained.json"
    tok.save(str(path))
    return path


def test_pretrained_file(tmp_path):
    """pretrained: a tokenizer.json written by tokenizers is used as is, eot from tokenizer.eot_token."""
    path = word_level_file(tmp_path, ["</s>"])
    tok = build_tokenizer(TokenizerConfig(type="pretrained", path=str(path), eot_token="</s>"), [], False)
    assert tok.encode("hello world") == [1, 2] and tok.eot_id == 3


def test_pretrained_without_eot_token(tmp_path):
    """A pretrained file lacking the configured eot token: DataError saying which key to set."""
    path = word_level_file(tmp_path, ["</s>"])
    with pytest.raises(DataError, match=re.escape("no token '<|endoftext|>' (set tokenizer.eot_token")):
        build_tokenizer(TokenizerConfig(type="pretrained", path=str(path)), [], False)


def test_pretrained_missing_or_garbage_file(tmp_path):
    """A missing file and a file that is not a tokenizer.json: DataError naming the path."""
    with pytest.raises(DataError, match="no such file"):
        build_tokenizer(TokenizerConfig(type="pretrained", path=str(tmp_path / "nope.json")), [], False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="bad.json: not a tokenizer.json"):
        build_tokenizer(TokenizerConfig(type="pretrained", path=str(bad)), [], False)


def test_load_guesses_the_only_special_token(tmp_path):
    """Loading a tokenizers file without <|endoftext|> takes its single special token as eot, and
    refuses to guess among several."""
    assert TextTokenizer.load(word_level_file(tmp_path, ["</s>"])).eot_id == 3
    ambiguous = word_level_file(tmp_path, ["<s>", "</s>"])
    with pytest.raises(DataError, match="cannot tell which token ends a text"):
        TextTokenizer.load(ambiguous)
    assert TextTokenizer.load(ambiguous, eot_token="</s>").eot_id == 4


def test_char_tokenizer_is_a_standard_tokenizer_json_that_agrees_on_the_whole_corpus(tmp_path):
    """The saved char tokenizer loads with tokenizers' own Tokenizer.from_file and encodes and decodes the
    whole builtin corpus (trained on part of it, so some characters are unknown; plus the end-of-text
    spelling) exactly as the CharVocab does."""
    docs = builtin_documents()
    tok = build_tokenizer(TokenizerConfig(type="char"), docs[:60], progress=False)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    standard = Tokenizer.from_file(str(path))
    standard.encode_special_tokens = True  # what TextTokenizer sets: the eot spelling is plain text
    text = "\n".join(docs) + " <|endoftext|> \u00e9\u4e2d\U0001f600 \ufffd"
    ids = tok.encode(text)
    assert standard.encode(text, add_special_tokens=False).ids == ids
    assert standard.decode(ids, skip_special_tokens=False) == tok.decode(ids)
    assert standard.get_vocab_size(with_added_tokens=True) == tok.vocab_size
    assert standard.decode([tok.eot_id], skip_special_tokens=False) == "<|endoftext|>"
    reloaded = TextTokenizer.load(path)
    assert reloaded.kind == "char" and reloaded.encode(text) == ids and reloaded.eot_id == tok.eot_id


def test_char_tokenizer_of_the_earlier_private_format_still_loads(tmp_path):
    import json

    path = tmp_path / "tokenizer.json"
    spec = {
        "format": "albert_gpt.char_tokenizer",
        "version": 1,
        "chars": ["a", "b"],
        "eot_token": "<|endoftext|>",
    }
    path.write_text(json.dumps(spec), encoding="utf-8")
    tok = TextTokenizer.load(path)
    assert tok.encode("abz") == [0, 1, 3] and tok.eot_id == 2 and tok.decode([3]) == UNKNOWN_CHAR


def test_pretrained_by_hub_name_reads_the_local_hub_cache_offline(tmp_path, monkeypatch):
    """tokenizer.path may be a hub model name: with the hub offline it is read from the Hugging Face cache,
    laid out as huggingface_hub lays it out (refs/main -> snapshots/<commit>/tokenizer.json)."""
    source = word_level_file(tmp_path, ["<|endoftext|>"])
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-tok"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "tokenizer.json").write_bytes(source.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    tok = build_tokenizer(TokenizerConfig(type="pretrained", path="someone/tiny-tok"), [], False)
    by_file = build_tokenizer(TokenizerConfig(type="pretrained", path=str(source)), [], False)
    assert tok.vocab_size == by_file.vocab_size and tok.encode("hello world") == by_file.encode(
        "hello world"
    ) == [1, 2]
    with pytest.raises(
        DataError, match="tokenizer.path 'someone/other': not a local file, and the hub has no"
    ):
        build_tokenizer(TokenizerConfig(type="pretrained", path="someone/other"), [], False)
