"""The `albert-gpt` command: parses arguments and calls library functions.

User mistakes (AlbertGPTError) become one line on stderr and exit code 2, never a traceback.
Heavy imports (torch, datasets) happen inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any

from albert_gpt.config import Device, DType
from albert_gpt.errors import AlbertGPTError, ConfigError

log = logging.getLogger("albert_gpt")


def _load(config: str, overrides: list[str]):
    from albert_gpt.config import load_config

    path = Path(config)
    if path.is_dir():  # a run directory: its resolved config
        run_dir, path = path, path / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{config} is a directory without a config.yaml (not a run directory)")
        # The saved out_dir may be relative to where training started; the directory given wins. Made
        # absolute without resolving links: a run folder that links elsewhere must stay visible as such.
        run_dir = Path(os.path.abspath(run_dir))
        overrides = [f"run.out_dir={run_dir.parent}", f"run.name={run_dir.name}", *overrides]
    return load_config(path, overrides)


def cmd_info(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.set)  # before importing torch, so a bad config fails fast
    from albert_gpt.study.info import format_info, model_info

    info = model_info(cfg)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from albert_gpt.data.pipeline import format_stats, prepare_data

    cfg = _load(args.config, args.set)
    prepared = prepare_data(cfg, progress=cfg.log.progress)
    print(format_stats(prepared))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from albert_gpt.training.trainer import train

    result = train(_load(args.config, args.set), resume=args.resume)
    return 128 + result["signal"] if result.get("interrupted") else 0  # the shell's code for that signal


def cmd_eval(args: argparse.Namespace) -> int:
    from albert_gpt.inference.evaluate import evaluate_run, format_eval

    result = evaluate_run(
        Path(args.run_dir), split=args.split, stride=args.stride, checkpoint=args.checkpoint,
        batch_size=args.batch_size, progress=not args.json, device=args.device, dtype=args.dtype,
        text=None if args.text is None else Path(args.text),
    )
    print(json.dumps(result) if args.json else format_eval(result))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from albert_gpt.inference.generate import generate_from_run

    generate_from_run(
        Path(args.run_dir), prompt=args.prompt, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from albert_gpt.export.hf_export import export_run

    out = export_run(Path(args.run_dir), Path(args.out_dir), args.checkpoint, overwrite=args.overwrite)
    print(f"wrote {out} (load it with transformers: AutoModelForCausalLM.from_pretrained(path, "
          "trust_remote_code=True))")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from albert_gpt.study.sweep import SweepInterrupted, run_sweep

    try:
        run_sweep(Path(args.sweep), overrides=args.set, out_dir=args.out_dir)
    except SweepInterrupted as exc:
        print(f"albert-gpt sweep: {exc}", file=sys.stderr)
        return 128 + exc.signum  # the shell's code for that signal, as train returns
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from albert_gpt.study.report import write_report

    path = write_report(Path(args.sweep_dir))
    print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.warmup < 0:
        raise ConfigError(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps} and {args.warmup})")
    from albert_gpt.study.benchmark import benchmark, format_table

    rows = benchmark(args.config, args.set, args.compare, args.steps, args.warmup, args.synthetic,
                     args.variant)
    print(format_table(rows))
    print(json.dumps(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_grad_at_init(args: argparse.Namespace) -> int:
    cfg = _load(args.config, args.set)
    from albert_gpt.runtime import set_threads
    from albert_gpt.study.grad_at_init import run_grad_at_init

    set_threads(cfg.run)
    path = run_grad_at_init(cfg, Path(args.out), args.depths, tuple(args.seeds), args.batches)
    print(path.read_text(encoding="utf-8"))
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
    from albert_gpt.study.claims.ledger import (
        LEDGER_FILE,
        RESULTS_DIR,
        run_claim,
        write_findings,
        write_ledger,
    )
    from albert_gpt.study.claims.registry import all_claims, get_claim

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.size == "smoke" and args.write_docs:
        raise ConfigError("--size smoke checks the code with too few seeds for a verdict; its results never "
                          "go to docs/ (drop --write-docs)")
    names = [c.name for c in all_claims()] if args.claim == "all" else [] if args.claim == "ledger" \
        else [get_claim(args.claim).name]
    # The committed ledger (docs/) changes only when asked; by default results land in the work folder.
    work = Path(args.work_dir)
    results_dir, ledger = (RESULTS_DIR, LEDGER_FILE) if args.write_docs else (work / "results",
                                                                             work / "claims.md")
    for name in names:
        path = run_claim(get_claim(name), size=args.size, workers=args.workers, work_dir=work,
                         results_dir=results_dir, fresh=args.fresh)
        log.info("claim %s: results in %s", name, path)
    print(f"wrote {write_ledger(all_claims(), results_dir=results_dir, path=ledger)}")
    readme = Path("README.md")  # the committed docs are written from the repository's root, as docs/ is
    if args.write_docs and readme.is_file() and write_findings(all_claims(), readme, results_dir):
        print("wrote the findings block of README.md")
    return 0


class _SubcommandsWithCommonFlags:
    """add_parser with the global flags (`common`) as a parent of every subcommand."""

    def __init__(self, action: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self.action, self.common = action, common

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self.action.add_parser(name, parents=[self.common], **kwargs)


def with_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, choices=typing.get_args(Device),
                   help="where to run (default: auto, this machine's GPU if it has one, else the CPU; "
                   "not the device the run was trained on)")
    p.add_argument("--dtype", default=None, choices=typing.get_args(DType),
                   help="compute dtype (default: auto, bfloat16 where this device runs it fast, "
                   "else float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="albert-gpt", description="Train and study post-LN, parameter-shared GPT models."
    )
    from albert_gpt.version import __version__

    parser.add_argument("--version", action="version", version=f"albert-gpt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The global flags again on every subcommand, so `albert-gpt train CONFIG -v` works too; SUPPRESS
    # keeps a subcommand from resetting a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    sub = _SubcommandsWithCommonFlags(parser.add_subparsers(dest="command", required=True), common)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("config", help="YAML config file (or a run directory)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.lr=3e-4 (repeatable)")
        return p

    p = with_config("info", "parameters (unique and applied) and FLOPs per token")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = with_config("prepare", "run the data pipeline alone and print corpus/token statistics")
    p.set_defaults(func=cmd_prepare)

    p = with_config("train", "train a model")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="perplexity and bits per byte of a trained run")
    p.add_argument("run_dir", help="a run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="which of the run's splits to score (read from its token cache)")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="score this UTF-8 text file instead, with the run's tokenizer (no training data "
                   "needed)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: block_size)")
    p.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: best, else latest)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward pass (default: eval.batch_size, else train.batch_size)")
    with_device_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a trained run")
    p.add_argument("run_dir", help="a run directory (holds config.yaml and checkpoints/)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="stop after this many tokens")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None, help="sample among the smallest set of tokens "
                   "whose probabilities sum to p (nucleus sampling)")
    p.add_argument("--seed", type=int, default=1337, help="the same seed gives the same text")
    p.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: best, else latest)")
    with_device_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="write a run as a Hugging Face transformers model folder")
    p.add_argument("run_dir", help="a run directory (holds config.yaml and checkpoints/)")
    p.add_argument("out_dir", help="the folder to write (config, weights, tokenizer, modeling code)")
    p.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: best, else latest)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir when it is not empty")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sweep", help="run a grid of configs (resumable)")
    p.add_argument("sweep", help="sweep YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every cell")
    p.add_argument("--out-dir", default=None, help="parent folder of the sweep directory")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="write report.md (tables, plots) for a sweep directory")
    p.add_argument("sweep_dir", help="a sweep directory (holds the sweep's cells and summary.md)")
    p.set_defaults(func=cmd_report)

    p = with_config("bench", "time training steps: ms/step, tokens/s, MFU, memory (variants interleaved)")
    p.add_argument("--compare", action="append", default=[], metavar="KEY=V1,V2",
                   help="variants to interleave, every combination; the first value is the baseline")
    p.add_argument("--variant", action="append", default=[], metavar="'KEY=V KEY=V'",
                   help="one variant, whole (instead of --compare; repeatable); the first is the baseline")
    p.add_argument("--steps", type=int, default=50, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first (compilation)")
    p.add_argument("--synthetic", action="store_true", help="random tokens instead of the data pipeline")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the rows to FILE as JSON")
    p.set_defaults(func=cmd_bench)

    study = sub.add_parser("study", help="experiments that measure what normalization does")
    experiments = _SubcommandsWithCommonFlags(study.add_subparsers(dest="experiment", required=True), common)
    p = experiments.add_parser("grad-at-init", help="E1: gradient norm of every layer at init against depth")
    p.add_argument("config", help="YAML config file (data, model shape)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="layer applications L")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="initializations averaged")
    p.add_argument("--batches", type=int, default=3, help="training batches averaged per init")
    p.add_argument("--out", default="sweeps/e1_grad_at_init", help="folder for e1.json, e1.md, the figure")
    p.set_defaults(func=cmd_grad_at_init)
    from albert_gpt.study.claims.registry import help_listing

    p = experiments.add_parser(
        "claim", help="one row of the claims ledger (docs/claims.md), or all of them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="claims (letter, name, title):\n" + help_listing(),
    )
    p.add_argument("claim", help="a claim's letter or name, `all`, or `ledger` (rewrite docs/claims.md only)")
    p.add_argument("--size", default="cpu", choices=("cpu", "gpu", "smoke"),
                   help="cpu: 30 minutes or less a row on 2 cores; gpu: the larger grid for one GPU; smoke: "
                   "one cell per arm, first seed (checks the code; too few seeds for a verdict)")
    p.add_argument("--workers", type=int, default=2, help="cells measured side by side, one thread each")
    p.add_argument("--work-dir", default="claims_runs", help="where measured cells are kept (resumable)")
    p.add_argument("--fresh", action="store_true", help="measure every cell again instead of reusing them")
    p.add_argument("--write-docs", action="store_true",
                   help="write the results and the ledger into docs/ (default: WORK_DIR/results and "
                   "WORK_DIR/claims.md, leaving the committed ledger alone)")
    p.set_defaults(func=cmd_claim)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    try:
        return args.func(args)
    except AlbertGPTError as exc:
        print(f"albert-gpt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"albert-gpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`albert-gpt info ... | head`): not an error worth a trace
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail
        return 141


if __name__ == "__main__":
    sys.exit(main())
