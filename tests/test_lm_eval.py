"""lm-evaluation-harness on an exported model: the README's command, with the task shipped in
lm_eval_tasks/, agrees with `albert-gpt eval --text` on bits per byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_utils import tiny_config

from albert_gpt.cli import main
from albert_gpt.training.trainer import train

pytest.importorskip("lm_eval", reason="the lmeval extra: pip install -e '.[lmeval]'")
ROOT = Path(__file__).resolve().parents[1]


def test_lm_eval_bits_per_byte_agree_with_albert_gpt_eval(tmp_path, capsys):
    cfg = tiny_config(tmp_path, train={"max_steps": 6})
    train(cfg)
    assert main(["export", str(cfg.run_dir), str(tmp_path / "hf")]) == 0
    text = tmp_path / "text.txt"
    # longer than several windows, so the rolling windows and the last, short one all count
    text.write_text("the small dog ran on a big red log and then sat.\n" * 12, encoding="utf-8")
    capsys.readouterr()
    assert (
        main(
            ["eval", str(cfg.run_dir), "--text", str(text), "--json", "--device", "cpu", "--dtype", "float32"]
        )
        == 0
    )
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    command = [
        lm_eval,
        "--model",
        "hf",
        "--model_args",
        f"pretrained={tmp_path / 'hf'},trust_remote_code=True,dtype=float32",
        "--tasks",
        "albert_text",
        "--include_path",
        str(ROOT / "lm_eval_tasks"),
        "--metadata",
        json.dumps({"text_file": str(text)}),
        "--batch_size",
        "8",
        "--device",
        "cpu",
        "--output_path",
        str(tmp_path / "lm_eval_out"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "lm_eval_out").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]["albert_text"]
    assert theirs["bits_per_byte,none"] == pytest.approx(ours["bits_per_byte"], abs=1e-3)
    assert abs(theirs["bits_per_byte,none"] - ours["bits_per_byte"]) < 1e-5  # in fact the same windows
    # the task names its aggregations: lm-eval has no default to pick and warn about
    assert "aggregation" not in done.stderr and "higher_is_better" not in done.stderr, done.stderr[-2000:]
