"""Data preparation at scale: albert_gpt's pipeline beside the `tokenizers` library alone on the same text.

    python scripts/bench_data.py --text tinyshakespeare.txt --rows 20MB 100MB 100MBx100 1GB \
        --work /tmp/bench_data --out docs/perf/data.json --write

For each row a corpus of that size is built from paragraphs of real text (the --text files and
Python's own reference documentation, drawn at random with a fixed seed), as one file or as N files
(`100MBx100`), in one of four shapes (a `:SHAPE` suffix): `lines` (the default: paragraphs as they are),
`nonewline` (every line break turned into a space: one line per file, like minified JSON or a log
written with carriage returns), `nospace` (every whitespace character removed) or `invalid` (one invalid
UTF-8 byte every 10 KB), and with an `@char` suffix the pipeline uses the char tokenizer on that row (the
floor stays BPE). E.g. `--rows 1GB 1GBx2000 200MB:nonewline 200MB:nospace 100MB:invalid 1GB@char`
(`1GBx2000`: 2,000 files of 0.5 MB).
Then, each in a fresh process whose resident memory (the process and its children together) is
sampled every 50 ms:

  cold   `albert-gpt prepare` with an empty token cache: read, train the BPE, tokenize, write the cache
  warm   `albert-gpt prepare` again: the cache is found and opened
  raw    the floor: `tokenizers` alone trains the same BPE on the same number of bytes (the pipeline's
         tokenizer.train_max_bytes) and encodes the whole text with `encode_batch_fast` over pieces of
         256 KiB (extended to the next line break within 64 KiB), writing uint16 ids as it goes; no
         splits, no checks, no cache

With --pairs N, cold and raw run N times as adjacent pairs (cold, raw, cold, raw, ...), so a slow
moment of a shared machine falls on both; the table gives each pair's time ratio (pipeline time /
floor time: above 1 is slower) and the median. Peak memory is GNU time's maximum resident set
(`/usr/bin/time -v`) where it exists, else the sampled peak of the process tree.

--write puts the table between the data-table markers of docs/performance.md.

With --stream, each row instead times `albert-gpt train` of a small model for one step with
data.streaming: true on that corpus, cold (the stream's head entry built: BPE trained on its first
train_max_bytes, held-out slices encoded) and warm (the entry reused): an upper bound on the time to
the first step, which should not grow with the corpus (table between the stream-table markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
START, END = "<!-- data-table:start -->", "<!-- data-table:end -->"
STREAM_START, STREAM_END = "<!-- stream-table:start -->", "<!-- stream-table:end -->"
EOT = "<|endoftext|>"


# ---------------------------------------------------------------- corpora

def paragraphs(texts: list[Path]) -> list[str]:
    from pydoc_data.topics import topics

    sources = [p.read_text(encoding="utf-8") for p in texts] + [topics[k] for k in sorted(topics)]
    return [p.strip("\n") + "\n" for text in sources for p in text.split("\n\n") if p.strip()]


SHAPES = ("lines", "nonewline", "nospace", "invalid")


def parse_row(spec: str) -> tuple[int, int, str]:
    """'100MB' -> (100e6 bytes, 1 file, 'lines'); '100MBx100:nonewline' -> (100e6, 100, 'nonewline');
    units KB, MB, GB (powers of 1000); an @TOKENIZER suffix is read by row_tokenizer."""
    match = re.fullmatch(r"(\d+)(KB|MB|GB)(?:x(\d+))?(?::(\w+))?", spec.split("@")[0])
    if not match or (match[4] or "lines") not in SHAPES:
        raise SystemExit(f"--rows: cannot read {spec!r} (e.g. 20MB, 1GB, 100MBx100, 200MB:nonewline; "
                         f"shapes: {', '.join(SHAPES)})")
    size = int(match[1]) * {"KB": 10**3, "MB": 10**6, "GB": 10**9}[match[2]]
    return size, int(match[3] or 1), match[4] or "lines"


def shaped(paragraph: str, shape: str) -> str:
    """A paragraph as the corpus shape writes it (`invalid` bytes are added per file, below)."""
    if shape == "nonewline":
        return paragraph.replace("\r", " ").replace("\n", " ")
    if shape == "nospace":
        return "".join(paragraph.split())
    return paragraph + "\n"


INVALID_EVERY = 10_000  # bytes between invalid UTF-8 bytes in the `invalid` shape


def build_corpus(where: Path, size: int, n_files: int, paras: list[str], shape: str = "lines",
                 seed: int = 0) -> Path:
    """`size` bytes of paragraphs drawn at random, in `n_files` files of about equal size, in `shape`;
    reused if there."""
    done = where / ".complete"
    if done.is_file():
        return where
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    rng = random.Random(seed)
    per_file = size // n_files
    for i in range(n_files):
        written = 0
        with (where / f"part{i:05d}.txt").open("wb") as f:
            buffer: list[bytes] = []
            while written < per_file:
                chunk = shaped(rng.choice(paras), shape).encode("utf-8")
                if shape == "invalid" and written // INVALID_EVERY != (written + len(chunk)) // INVALID_EVERY:
                    chunk += b"\xff"  # a byte that never starts or continues a UTF-8 sequence
                buffer.append(chunk)
                written += len(chunk)
                if len(buffer) >= 4096:
                    f.write(b"".join(buffer))
                    buffer = []
            f.write(b"".join(buffer))
    done.write_text("ok")
    return where


# ---------------------------------------------------------------- measuring a process

def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (0 once it is gone)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


GNU_TIME = Path("/usr/bin/time")


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak resident memory of one command: GNU time's maximum resident set where it
    exists (`time_v_rss_mb`), and the process tree's, sampled every 50 ms (`peak_rss_mb`)."""
    report = None
    if GNU_TIME.is_file():
        report = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_time_{os.getpid()}.txt"
        cmd = [str(GNU_TIME), "-v", "-o", str(report), *cmd]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    result = {"seconds": seconds, "peak_rss_mb": peak / 2**20, "output": out}
    if report is not None:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read_text())
        report.unlink(missing_ok=True)
        result["time_v_rss_mb"] = int(found[1]) / 1024 if found else None
    return result


RAW = r"""
import sys, time, numpy as np
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
files = sorted(Path(sys.argv[1]).glob("*.txt")); vocab = int(sys.argv[2]); cap = int(sys.argv[3])
out = Path(sys.argv[4])
def pieces(limit=None):
    budget = limit
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as f:
            while budget is None or budget > 0:
                text = f.read(1 << 18)
                if not text:
                    break
                text += f.readline(1 << 16)
                if budget is not None:
                    budget -= len(text)
                yield text
t = Tokenizer(models.BPE())
t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
t.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[sys.argv[5]],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
t0 = time.perf_counter()
t.train_from_iterator(pieces(cap), trainer=trainer)
t1 = time.perf_counter()
n, batch = 0, []
with out.open("wb") as f:
    def flush(batch):
        global n
        for e in t.encode_batch_fast(batch):
            f.write(np.asarray(e.ids, dtype=np.uint16).tobytes()); n += len(e.ids)
    for p in pieces():
        batch.append(p)
        if len(batch) == 16:
            flush(batch); batch = []
    flush(batch)
t2 = time.perf_counter()
print(f"RAW train_s={t1 - t0:.3f} encode_s={t2 - t1:.3f} tokens={n}")
"""


def row_tokenizer(spec: str, args: argparse.Namespace) -> str:
    """The pipeline's tokenizer.type on this row: its @suffix, else --tokenizer."""
    name = spec.split("@")[1] if "@" in spec else args.tokenizer
    if name not in ("bpe", "char"):
        raise SystemExit(f"--rows: {spec!r}: tokenizer {name!r} is not bpe or char")
    return name


def row_setup(spec: str, args: argparse.Namespace, paras: list[str], kind: str) -> tuple[dict, Path, Path]:
    """The row's corpus (built once), an emptied cache folder for it, and the row's first fields."""
    size, n_files, shape = parse_row(spec)
    name = spec.replace(":", "_").replace("@", "_")
    corpus_name = spec.split("@")[0].replace(":", "_")  # the same corpus for every tokenizer
    corpus = build_corpus(args.work / "corpora" / corpus_name, size, n_files, paras, shape)
    nbytes = sum(p.stat().st_size for p in corpus.glob("*.txt"))
    cache = args.work / kind / name
    shutil.rmtree(cache, ignore_errors=True)
    return {"row": spec, "bytes": nbytes, "files": n_files, "shape": shape}, corpus, cache


def _rss(m: dict) -> float:
    """GNU time's maximum resident set where measured, else the sampled peak."""
    return m.get("time_v_rss_mb") or m["peak_rss_mb"]


def run_row(spec: str, args: argparse.Namespace, paras: list[str]) -> dict:
    row, corpus, cache = row_setup(spec, args, paras, "cache")
    tokenizer = row_tokenizer(spec, args)
    cfg = args.work / f"{spec.replace(':', '_').replace('@', '_')}.yaml"
    cfg.write_text(
        f"data: {{source: files, path: {corpus}, cache_dir: {cache}}}\n"
        f"tokenizer: {{type: {tokenizer}, vocab_size: {args.vocab}, "
        f"train_max_bytes: {args.train_max_bytes}}}\n"
        "log: {progress: false}\n"
    )
    prepare = [sys.executable, "-m", "albert_gpt", "prepare", str(cfg)]
    raw_out = args.work / "raw_tokens.bin"
    floor = [sys.executable, "-c", RAW, str(corpus), str(args.vocab), str(args.train_max_bytes), str(raw_out),
             EOT]
    colds, raws = [], []
    for _ in range(args.pairs):  # adjacent pairs: a slow spell of the machine falls on both sides
        shutil.rmtree(cache, ignore_errors=True)
        colds.append(measure(prepare))
        raws.append(measure(floor))
        raw_out.unlink(missing_ok=True)
    warm = measure(prepare)
    meta = json.loads(next(cache.glob("*/meta.json")).read_text())
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    stats = meta["stats"]
    found = dict(re.findall(r"(\w+)=([\d.]+)", raws[-1]["output"].splitlines()[-1]))
    ratios = [c["seconds"] / r["seconds"] for c, r in zip(colds, raws)]
    row.update(
        tokens=tokens, tokenizer=tokenizer, sample_bytes=stats.get("tokenizer_sample_bytes"),
        cold_s=[c["seconds"] for c in colds], raw_s=[r["seconds"] for r in raws],
        time_ratio=ratios, time_ratio_median=statistics.median(ratios),
        cold_rss_mb=max(_rss(c) for c in colds), raw_rss_mb=max(_rss(r) for r in raws),
        rss_source="time -v" if colds[0].get("time_v_rss_mb") else "sampled",
        cold_tokenizer_s=stats["tokenizer_seconds"], cold_tokenize_s=stats["tokenize_seconds"],
        encode_tokens_per_s=stats["tokens_per_second"],
        warm_s=warm["seconds"], warm_rss_mb=_rss(warm), raw_tokens=int(found["tokens"]),
        raw_train_s=float(found["train_s"]), raw_encode_s=float(found["encode_s"]),
    )
    print(format_table([row]).splitlines()[-1], flush=True)
    return row


def run_stream_row(spec: str, args: argparse.Namespace, paras: list[str]) -> dict:
    row, corpus, cache = row_setup(spec, args, paras, "stream_cache")
    cfg = args.work / f"stream_{spec}.yaml"
    cfg.write_text(
        f"run: {{name: stream_{spec}, out_dir: {args.work / 'runs'}, overwrite: true, device: cpu}}\n"
        f"data: {{source: files, path: {corpus}, cache_dir: {cache}, streaming: true}}\n"
        f"tokenizer: {{type: bpe, vocab_size: {args.vocab}, train_max_bytes: {args.train_max_bytes}}}\n"
        "model: {n_layers: 2, n_embd: 64, n_heads: 2, block_size: 64}\n"
        "train: {batch_size: 8, max_steps: 1, warmup_steps: 0, checkpoint_interval: 0}\n"
        "eval: {batches: 1, sample_tokens: 0}\nlog: {progress: false}\n"
    )
    command = [sys.executable, "-m", "albert_gpt", "train", str(cfg)]
    cold, warm = measure(command), measure(command)
    row.update(cold_s=cold["seconds"], cold_rss_mb=cold["peak_rss_mb"], warm_s=warm["seconds"],
               warm_rss_mb=warm["peak_rss_mb"])
    print(format_stream_table([row]).splitlines()[-1], flush=True)
    return row


def format_stream_table(rows: list[dict]) -> str:
    lines = ["| corpus | first run: s to the end of step 1 | its peak RSS | again (head cached): s "
             "| its peak RSS |", "|" + "---|" * 5]
    for r in rows:
        files = f", {r['files']} files" if r["files"] > 1 else ""
        lines.append(f"| {r['bytes'] / 1e6:,.0f} MB{files} | {r['cold_s']:.1f} | {r['cold_rss_mb']:,.0f} MB "
                     f"| {r['warm_s']:.1f} | {r['warm_rss_mb']:,.0f} MB |")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    head = ("| corpus | tokens | BPE trained on | albert-gpt prepare, s per pair | floor, s per pair "
            "| time ratio per pair (median) | encoding alone, s: prepare / floor (last pair) "
            "| prepare peak RSS | floor peak RSS | RSS ratio | warm s |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        files = f", {r['files']:,} files" if r["files"] > 1 else ""
        shape = "" if r.get("shape", "lines") == "lines" else f", {r['shape']}"
        tok = "" if r.get("tokenizer", "bpe") == "bpe" else f", {r['tokenizer']} tokenizer"
        lines.append(
            f"| {r['bytes'] / 1e6:,.0f} MB{files}{shape}{tok} | {r['tokens'] / 1e6:,.1f} M "
            f"| {f'{sample / 1e6:,.1f} MB' if (sample := r.get('sample_bytes')) else '-'} "
            f"| {' / '.join(f'{x:,.1f}' for x in r['cold_s'])} "
            f"| {' / '.join(f'{x:,.1f}' for x in r['raw_s'])} "
            f"| {' / '.join(f'{x:.2f}' for x in r['time_ratio'])} ({r['time_ratio_median']:.2f}) "
            f"| {r['cold_tokenize_s']:,.1f} / {r['raw_encode_s']:,.1f} "
            f"| {r['cold_rss_mb']:,.0f} MB | {r['raw_rss_mb']:,.0f} MB "
            f"| {r['cold_rss_mb'] / r['raw_rss_mb']:.1f}x "
            f"| {r['warm_s']:.1f} |"
        )
    return "\n".join(lines)


def write_table(doc: Path, result: dict, stream: bool) -> None:
    start, end = (STREAM_START, STREAM_END) if stream else (START, END)
    text = doc.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise SystemExit(f"{doc}: no {start} ... {end} markers")
    m = result["machine"]
    rows = result["rows"]
    rss_source = rows[0].get("rss_source", "sampling") if rows and not stream else "sampling"
    commits = ", ".join(sorted({str(r.get("commit", result.get("commit", "unknown"))) for r in rows}))
    caption = (f"Measured by `scripts/bench_data.py{' --stream' if stream else ''}` on {m['cpus']} cores "
               f"({m['processor']}), BPE vocabulary {result['vocab']:,}, "
               f"tokenizer.train_max_bytes {result['train_max_bytes']:,}, adjacent pairs, peak RSS by "
               f"{rss_source}, "
               f"tokenizers {m['tokenizers']}; commit {commits}, {result['date']}.")
    table = format_stream_table(result["rows"]) if stream else format_table(result["rows"])
    block = f"{start}\n{caption}\n\n{table}\n{end}"
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    doc.write_text(before + block + after, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", type=Path, nargs="*", default=[], help="real text files to draw from")
    ap.add_argument("--rows", nargs="*", default=["20MB", "100MB", "100MBx100", "1GB"],
                    help="corpus sizes and shapes, e.g. 20MB, 1GB, 100MBx100 (100 files), 200MB:nonewline")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_data"), help="corpora and caches go here")
    ap.add_argument("--vocab", type=int, default=32768, help="BPE vocabulary size")
    ap.add_argument("--train-max-bytes", type=int, default=200_000_000, help="tokenizer.train_max_bytes")
    ap.add_argument("--tokenizer", choices=("bpe", "char"), default="bpe",
                    help="the pipeline's tokenizer.type")
    ap.add_argument("--pairs", type=int, default=1, help="adjacent (pipeline, floor) pairs per row")
    ap.add_argument("--stream", action="store_true", help="time a streamed run's first step instead")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--write", action="store_true", help="write the table into docs/performance.md")
    ap.add_argument("--update", action="store_true",
                    help="keep the rows already in --out, replacing those measured again")
    ap.add_argument("--drop", nargs="*", default=[], help="with --update: rows of --out to leave out")
    args = ap.parse_args()
    import tokenizers

    paras = paragraphs(args.text)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    rows = [{**(run_stream_row if args.stream else run_row)(spec, args, paras), "commit": commit}
            for spec in args.rows]
    if args.update and args.out and args.out.is_file():  # rows measured now replace those of the same spec
        new = {r["row"]: r for r in rows}
        before = json.loads(args.out.read_text(encoding="utf-8"))
        kept = [{"commit": before.get("commit", "unknown"), **r}
                for r in before["rows"] if r["row"] not in args.drop]
        rows = [new.pop(r["row"], r) for r in kept] + list(new.values())
    result = {
        "rows": rows, "vocab": args.vocab, "train_max_bytes": args.train_max_bytes,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "tokenizers": tokenizers.__version__},
    }
    print(format_stream_table(rows) if args.stream else format_table(rows))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.write:
        write_table(ROOT / "docs" / "performance.md", result, args.stream)


if __name__ == "__main__":
    main()
