"""data.streaming: windows packed on the fly from the document stream, shuffled in a buffer, resumed exactly;
held-out slices from the head; training starts without reading the corpus to its end."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from train_utils import stop_at, tiny_config, write_corpus

from albert_gpt.checkpoint import find_latest, load_checkpoint
from albert_gpt.data import documents, streaming
from albert_gpt.data.pipeline import prepare_data
from albert_gpt.data.sources import load_source
from albert_gpt.data.streaming import StreamBatches, TokenWindowStream
from albert_gpt.data.tokenizer import cut_rule
from albert_gpt.errors import DataError
from albert_gpt.training.metrics import read_metrics
from albert_gpt.training.trainer import train

STREAM = {"streaming": True, "stream_holdout_tokens": 200, "shuffle_buffer": 16}


def stream_config(tmp_path, **sections):
    data = {**STREAM, **sections.pop("data", {})}
    return tiny_config(tmp_path, data=data, **sections)


@pytest.mark.parametrize("layout", ["one file", "30 files"])
def test_windows_in_order_cover_the_packed_tokens(tmp_path, monkeypatch, layout):
    """With a buffer of one, the stream's windows are the packed corpus cut every T tokens (overlapping by
    one), as the token cache of the same documents holds it: end-of-text tokens in the same places."""
    monkeypatch.setattr(documents, "PIECE_BYTES", 100)
    data = {"val_fraction": 0.0, "test_fraction": 0.0}
    if layout == "30 files":
        (tmp_path / "docs").mkdir()
        for d in range(30):
            (tmp_path / "docs" / f"{d:02d}.txt").write_text(f"line {d} of a doc\n" * 5, encoding="utf-8")
        data["path"] = str(tmp_path / "docs")
    cfg = tiny_config(tmp_path, data=data)
    prepared = prepare_data(cfg, progress=False)
    tokens = np.array(prepared.splits["train"].tokens, dtype=np.int64)
    docs = load_source(cfg.data, cut_rule(cfg.tokenizer)).splits["train"]
    T = 16
    windows = iter(TokenWindowStream(docs, prepared.tokenizer, T, seed=0, buffer_size=1))
    n_windows = (len(tokens) - 1) // T
    assert n_windows > 20
    for k in range(n_windows - 1):  # the last one waits in the buffer until the next epoch pushes it out
        assert np.array_equal(next(windows).numpy(), tokens[k * T:k * T + T + 1]), k
    if layout == "30 files":
        assert np.count_nonzero(tokens == prepared.tokenizer.eot_id) == 29


def test_shuffle_buffer_reorders_but_keeps_the_windows(tmp_path):
    """A buffer of 16: the first 200 windows drawn are distinct windows of the stream, not in stream order;
    two streams with the same seed draw the same ones, another seed others."""
    cfg = tiny_config(tmp_path, data={"val_fraction": 0.0, "test_fraction": 0.0})
    prepared = prepare_data(cfg, progress=False)
    docs = load_source(cfg.data).splits["train"]
    tokens = np.array(prepared.splits["train"].tokens, dtype=np.int64)
    T = 16
    all_windows = {tokens[k * T:k * T + T + 1].tobytes(): k for k in range((len(tokens) - 1) // T)}

    def draw(seed):
        stream = TokenWindowStream(docs, prepared.tokenizer, T, seed=seed, buffer_size=16)
        it = iter(stream)
        return [next(it).numpy() for _ in range(200)]

    a, b, c = draw(0), draw(0), draw(1)
    order = [all_windows[w.tobytes()] for w in a]
    assert len(set(order)) == 200 and order != sorted(order)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def short_stream_maker(tmp_path, lines: int):
    """A function making fresh StreamBatches (B = 4, T = 8, a buffer of 5, seed 3) over one short file."""
    corpus = tmp_path / "short.txt"
    corpus.write_text("the cat sat on the mat.\n" * lines, encoding="utf-8")
    cfg = tiny_config(tmp_path, data={"path": str(corpus), "val_fraction": 0.0, "test_fraction": 0.0})
    prepared = prepare_data(cfg, progress=False)
    docs = load_source(cfg.data).splits["train"]

    def make() -> StreamBatches:
        return StreamBatches(TokenWindowStream(docs, prepared.tokenizer, 8, seed=3, buffer_size=5), 4)

    return make


def test_stream_state_resumes_exactly_across_epochs(tmp_path):
    """Take a state after 37 windows, and a fresh stream loaded with it draws what the first draws next,
    through two ends of the stream (epochs)."""
    make = short_stream_maker(tmp_path, lines=20)
    first = make()
    for step in range(9):
        first.batch(step)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    for step in range(9, 30):  # 480 tokens a stream epoch: several epochs
        x1, y1 = first.batch(step)
        x2, y2 = resumed.batch(step)
        assert torch.equal(x1, x2) and torch.equal(y1, y2), step
    assert first.stream.epoch >= 2


def test_streaming_training_resumes_bit_identically(tmp_path, monkeypatch):
    """12 steps streamed straight, and 6 + SIGTERM + 6 resumed: equal weights, losses and val losses. The
    corpus is short and read in 100-byte pieces, so the stream wraps around and the buffer is mid-way."""
    monkeypatch.setattr(documents, "PIECE_BYTES", 100)
    sections = dict(model={"dropout": 0.1}, train={"max_steps": 12, "checkpoint_interval": 0},
                    eval={"interval": 4}, log={"interval": 4})
    for where in ("a", "b"):
        write_corpus(tmp_path / where, n_lines=20)
    straight = train(stream_config(tmp_path / "a", **sections))
    with monkeypatch.context() as m:
        stop_at(m, StreamBatches, 6)
        first = train(stream_config(tmp_path / "b", **sections))
    assert first["interrupted"] == "SIGTERM" and first["step"] == 6
    _, saved, _ = load_checkpoint(find_latest(tmp_path / "b" / "runs" / "tiny"))
    assert saved["sampler"]["stream"]["items_read"] > 0
    resumed = train(stream_config(tmp_path / "b", **sections), resume=True)
    assert straight["step"] == resumed["step"] == 12
    w_a, s_a, _ = load_checkpoint(find_latest(tmp_path / "a" / "runs" / "tiny"))
    w_b, s_b, _ = load_checkpoint(find_latest(tmp_path / "b" / "runs" / "tiny"))
    for name in w_a:
        assert torch.equal(w_a[name], w_b[name]), name
    assert s_a["sampler"]["stream"]["epoch"] >= 1  # the stream wrapped around
    for tag in ("train/loss", "val/loss"):
        a = [(r["step"], r["value"]) for r in read_metrics(tmp_path / "a" / "runs" / "tiny" / "metrics.jsonl")
             if r["tag"] == tag]
        b = [(r["step"], r["value"]) for r in read_metrics(tmp_path / "b" / "runs" / "tiny" / "metrics.jsonl")
             if r["tag"] == tag]
        assert a == b and len(a) == 3, tag


def test_streaming_starts_without_reading_to_the_end(tmp_path, monkeypatch):
    """A JSON Lines corpus whose line 3,000 is malformed: the token cache refuses it (naming the line); a
    streamed run trains its steps, having read only the head (groups of 4,000 characters here)."""
    monkeypatch.setattr(streaming, "GROUP_CHARS", 4000)
    path = tmp_path / "corpus.jsonl"
    rows = [json.dumps({"text": f"the cat sat on mat number {i}."}) for i in range(5000)]
    rows[2999] = "{not json"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = {"path": str(path)}
    with pytest.raises(DataError, match=r"corpus\.jsonl:3000: malformed JSON"):
        prepare_data(tiny_config(tmp_path / "cached", data=data), progress=False)
    cfg = stream_config(tmp_path / "streamed", data=data, tokenizer={"type": "char", "train_max_bytes": 2000},
                        train={"max_steps": 5, "checkpoint_interval": 0}, eval={"interval": 5})
    result = train(cfg)
    assert result["step"] == 5 and np.isfinite(result["val_loss"])
    prepared = prepare_data(cfg, progress=False)
    assert prepared.stats["cached"] and prepared.stream is not None
    assert 200 <= len(prepared.splits["val"]) < 300 and prepared.stream.skip_items > 0


def test_held_out_slices_come_first_and_training_skips_them(tmp_path):
    """val is the stream's first documents, test the next, train's head what follows: no overlap."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i:03d}."}) + "\n" for i in range(300)),
                    encoding="utf-8")
    cfg = stream_config(tmp_path, data={"path": str(path)})
    prepared = prepare_data(cfg, progress=False)
    tok = prepared.tokenizer
    texts = {name: tok.decode(split.tokens).split(tok.eot_token) for name, split in prepared.splits.items()}
    numbers = {name: [int(t.split()[1].rstrip(".")) for t in docs] for name, docs in texts.items()}
    assert numbers["val"] == list(range(len(numbers["val"])))
    assert numbers["test"][0] == len(numbers["val"])
    assert numbers["train"][0] == numbers["test"][-1] + 1 == prepared.stream.skip_items


def test_hub_stream_takes_val_from_its_own_split(tmp_path, monkeypatch):
    """A datasets stream (a local folder of JSON Lines loaded by `datasets` with streaming=True): val is the
    head of its validation split, training skips nothing of its train split, and the run trains."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    root = tmp_path / "hubcopy"
    root.mkdir()
    (root / "train.jsonl").write_text("".join(json.dumps({"text": f"the cat sat on a mat {i}."}) + "\n"
                                              for i in range(400)), encoding="utf-8")
    (root / "validation.jsonl").write_text("".join(json.dumps({"text": f"a hat at the mat {i}."}) + "\n"
                                                   for i in range(100)), encoding="utf-8")
    cfg = stream_config(tmp_path, data={"source": "hub", "path": str(root), "test_split": None,
                                              "test_fraction": 0.0},
                        train={"max_steps": 3, "checkpoint_interval": 0}, eval={"interval": 3})
    result = train(cfg)
    assert result["step"] == 3 and np.isfinite(result["val_loss"])
    prepared = prepare_data(cfg, progress=False)
    tok = prepared.tokenizer
    val = tok.decode(prepared.splits["val"].tokens).split(tok.eot_token)
    assert val[0] == "a hat at the mat 0." and all(text.startswith("a hat") for text in val)
    assert prepared.stream.skip_items == 0
    assert tok.decode(prepared.splits["train"].tokens).startswith("the cat sat on a mat 0.")


def test_held_out_slices_that_take_everything_are_a_clear_error(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("hello world\nthis is tiny\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"nothing left to train on .* lower data\.stream_holdout_tokens"):
        prepare_data(stream_config(tmp_path, data={"path": str(path)}), progress=False)


def test_a_prefetching_thread_reads_ahead_but_the_saved_position_is_the_used_batches(tmp_path):
    """On CUDA batches are drawn ahead on a thread: the stream runs ahead of training, yet state_dict is the
    position after the batches `get` handed out, equal to a stream read without a thread, and resuming from
    it continues with the same batches (the thread is tested here on the CPU, without pinning)."""
    from albert_gpt.data.prefetch import BatchPrefetcher

    make = short_stream_maker(tmp_path, lines=40)
    ahead, plain = make(), make()
    with BatchPrefetcher(ahead, accum_steps=2, start_step=0, end_step=20, pin=False, depth=4) as prefetcher:
        for step in range(6):
            for micro in range(2):
                x, _ = prefetcher.get(step, micro)
                assert torch.equal(x, plain.batch(step, micro)[0])
        deadline = time.monotonic() + 5
        while prefetcher._queue.qsize() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        # the thread has drawn 4 batches more than were used: the stream's generator is further on
        assert ahead.stream.rng.bit_generator.state != plain.stream.rng.bit_generator.state
        saved = ahead.state_dict()
    want = plain.state_dict()
    assert saved["items_read"] == want["items_read"] and saved["epoch"] == want["epoch"]
    assert torch.equal(saved["carry"], want["carry"]) and torch.equal(saved["buffer"], want["buffer"])
    resumed = make()
    resumed.load_state_dict(saved)
    for step in range(6, 12):
        assert torch.equal(resumed.batch(step)[0], plain.batch(step)[0])


def test_a_streamed_bpe_trains_once_on_the_head_sample(tmp_path, monkeypatch):
    """The stream's head is sampled once: its BPE is the one trained on training_sample of the source's
    training documents (computed here independently), and the summary's byte count is that sample's."""
    from albert_gpt.data.tokenizer import _train_bpe, training_sample

    monkeypatch.setattr(documents, "PIECE_BYTES", 200)
    cfg = stream_config(tmp_path, tokenizer={"type": "bpe", "vocab_size": 300, "train_max_bytes": 3000})
    prepared = prepare_data(cfg, progress=False)
    source = load_source(cfg.data, cut_rule(cfg.tokenizer))
    sample = list(training_sample(source.splits["train"], 3000, None))
    assert 3000 <= sum(len(p.encode()) for p in sample) < 3000 + 1000  # the corpus is larger than the cap
    assert prepared.stats["tokenizer_sample_bytes"] == sum(len(p.encode()) for p in sample)
    assert prepared.tokenizer.to_json() == _train_bpe(cfg.tokenizer, sample, False).to_str()
