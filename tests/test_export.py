"""`albert-gpt export`: the folder loads offline in Hugging Face transformers (trust_remote_code) and
computes albert_gpt's logits; its tokenizer encodes as the run's; generate() works with the KV cache."""

from __future__ import annotations

import json

import pytest
import torch
from train_utils import tiny_config

from albert_gpt.checkpoint import load_for_inference
from albert_gpt.cli import main
from albert_gpt.training.trainer import train

transformers = pytest.importorskip("transformers", reason="the hf extra: pip install -e '.[hf]'")

MODELS = {
    "shared post-LN": {"n_layers": 3, "n_groups": 1},
    "unshared pre-LN": {"n_layers": 3, "n_groups": 3, "norm_placement": "pre"},
    "shared ffn, per-depth norms, factorized": {
        "n_layers": 4,
        "n_groups": 2,
        "sharing": "ffn",
        "norm_per_depth_affine": True,
        "embedding_dim": 16,
    },
    "rmsnorm deepnorm": {"n_layers": 2, "n_groups": 1, "norm": "rmsnorm", "norm_placement": "deepnorm"},
    "no norm + final LN": {"n_layers": 2, "n_groups": 1, "norm_placement": "none", "final_norm": True},
}


@pytest.fixture(autouse=True)
def offline_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))


def _export(tmp_path, model, tokenizer="char"):
    tok = {"type": tokenizer} if tokenizer == "char" else {"type": "bpe", "vocab_size": 300}
    cfg = tiny_config(tmp_path, model=model, tokenizer=tok, train={"max_steps": 3})
    train(cfg)
    out = tmp_path / "hf"
    assert main(["export", str(cfg.run_dir), str(out)]) == 0
    return cfg, out


@pytest.mark.parametrize("name", MODELS)
def test_exported_model_computes_albert_gpt_logits(tmp_path, name):
    cfg, out = _export(tmp_path, MODELS[name])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    hf.eval()
    _, ours, _ = load_for_inference(cfg.run_dir)
    idx = torch.randint(
        0,
        cfg.model.vocab_size or ours.vocab_size,
        (2, cfg.model.block_size),
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        expected, _ = ours(idx)
        got = hf(input_ids=idx).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    stored = json.loads((out / "config.json").read_text())  # each shared module is stored once
    assert len(set(stored["attn_of_depth"])) == len({id(ours.blocks[i].attn) for i in ours.schedule})
    assert len(set(stored["ffn_of_depth"])) == len({id(ours.blocks[i].ffn) for i in ours.schedule})


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_exported_tokenizer_and_cached_generation(tmp_path, tokenizer):
    cfg, out = _export(tmp_path, MODELS["shared post-LN"], tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    _, ours, our_tok = load_for_inference(cfg.run_dir)
    text = "the red dog sat on a mat.\nthen <|endoftext|> a cat"
    assert hf_tok(text).input_ids == our_tok.encode(text)  # no BOS added; the eot spelling stays text
    assert hf_tok.decode(our_tok.encode(text)) == our_tok.decode(our_tok.encode(text))
    assert hf_tok.eos_token_id == our_tok.eot_id
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    prompt = torch.tensor([our_tok.encode("the cat")])
    new = cfg.model.block_size - prompt.size(1)
    greedy = hf.generate(
        prompt,
        max_new_tokens=new,
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=our_tok.eot_id,
    )
    ours_greedy = ours.generate(prompt, new, top_k=1)
    assert greedy.tolist() == ours_greedy.tolist()
    # a caller's max_new_tokens is the only length: no max_length beside it (transformers warns of both)
    assert "max_length" not in json.loads((out / "generation_config.json").read_text())
    assert hf_tok.model_max_length == cfg.model.block_size


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    cfg = tiny_config(tmp_path, model={"arch": "lstm", "norm": "layernorm"}, train={"max_steps": 2})
    train(cfg)
    assert main(["export", str(cfg.run_dir), str(tmp_path / "out")]) == 2
    assert "export writes transformer models; this run's model.arch is lstm" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
