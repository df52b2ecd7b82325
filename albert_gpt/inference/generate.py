"""Text generation from a trained model: seeded sampling, streamed to a terminal as it is produced.

Sampling itself (temperature, top-k, top-p, KV cache) is `CausalLM.generate`; this module turns
text into token ids and back, and prints each piece of text as soon as it is complete.

Shapes: T = prompt tokens (batch size is always 1 here).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import torch

from albert_gpt.modeling.sampling import check_sampling_args

if TYPE_CHECKING:
    from albert_gpt.data.tokenizer import TextTokenizer
    from albert_gpt.modeling.base import CausalLM

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"  # what a decoder writes for the bytes of a not-yet-complete UTF-8 character


class StreamDecoder:
    """Emits only newly complete text as token ids arrive.

    A byte-level BPE token can hold part of a multi-byte character, so decoding the ids one at
    a time would print garbage. Decoding the whole id list each time and holding back trailing
    U+FFFD keeps the printed text identical to a one-shot decode of the finished sequence, for
    any decoder whose output for a prefix of ids is a prefix of the full output (byte-level BPE
    and characters are; a decoder that rewrites earlier text prints nothing until it agrees again).
    """

    def __init__(self, tokenizer: TextTokenizer, stream: TextIO | None) -> None:
        self.tokenizer = tokenizer
        self.stream = stream
        self.ids: list[int] = []
        self.emitted = ""

    def _emit(self, text: str) -> None:
        if text.startswith(self.emitted) and len(text) > len(self.emitted):
            if self.stream is not None:
                self.stream.write(text[len(self.emitted):])
                self.stream.flush()
            self.emitted = text

    def push(self, token_id: int) -> None:
        self.ids.append(token_id)
        self._emit(self.tokenizer.decode(self.ids).rstrip(REPLACEMENT))

    def finish(self) -> str:
        """Flush what was held back (a genuinely unfinished character) and return the full text."""
        text = self.tokenizer.decode(self.ids)
        self._emit(text)
        return text


def encode_prompt(tokenizer: TextTokenizer, prompt: str, block_size: int) -> list[int]:
    """Prompt ids, the eot token for an empty prompt, cropped from the left to the context."""
    unknown = tokenizer.unknown_characters(prompt)
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        log.warning("prompt: %d character(s) the tokenizer never saw in training (%s) are given to the model "
                    "as the unknown token", len(unknown), shown)
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        return [tokenizer.eot_id]
    if len(ids) > block_size:
        log.warning(
            "prompt is %d tokens, longer than the context of %d; keeping its last %d tokens",
            len(ids), block_size, block_size,
        )
        ids = ids[-block_size:]
    return ids


def generate_text(
    model: CausalLM,
    tokenizer: TextTokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 1337,
    device: torch.device | str = "cpu",
    stream: TextIO | None = None,
) -> str:
    """Continue `prompt` and return the generated text (prompt excluded, end-of-text token dropped).

    The same seed gives the same text. Text is written to `stream` piece by piece as tokens are
    sampled; generation stops at the end-of-text token or after max_new_tokens.
    """
    device = torch.device(device)
    ids = encode_prompt(tokenizer, prompt, model.cfg.block_size)
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    decoder = StreamDecoder(tokenizer, stream)
    eot_id = tokenizer.eot_id

    def on_token(token_id: int) -> None:
        if token_id != eot_id:
            decoder.push(token_id)

    # with one sequence, generate reports every new token (eot last) through on_token
    model.generate(
        idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        generator=generator, eot_id=eot_id, on_token=on_token,
    )
    return decoder.finish()


def generate_from_run(
    run_dir: Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 1337,
    checkpoint: str | None = None,
    stream: TextIO | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> str:
    """Load a run's checkpoint and print the prompt followed by its continuation to stdout. `device` and
    `dtype` default to what this machine has (`auto`), not to what the run was trained on."""
    from albert_gpt.checkpoint import load_for_inference, require_run_dir
    from albert_gpt.errors import ConfigError
    from albert_gpt.inference.evaluate import inference_device
    from albert_gpt.runtime import autocast

    run_dir = Path(run_dir)
    require_run_dir(run_dir)
    if max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    try:
        check_sampling_args(temperature, top_k, top_p)
    except ValueError as exc:  # the library names the argument; the CLI user knows the flag
        raise ConfigError("--" + str(exc).replace("_", "-", 1)) from None
    torch_device, torch_dtype = inference_device(device, dtype)
    _, model, tokenizer = load_for_inference(run_dir, checkpoint=checkpoint, device="cpu")
    model.to(torch_device)
    out = stream if stream is not None else sys.stdout
    out.write(prompt)
    with autocast(torch_device, torch_dtype):
        text = generate_text(
            model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            seed=seed, device=torch_device, stream=out,
        )
    out.write("\n")
    out.flush()
    return text
