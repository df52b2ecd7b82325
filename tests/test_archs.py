"""The LSTM and causal-convolution language models (model.arch), their norms, and per-depth affine norms.

References are written independently of the modules: the LN-LSTM from Ba et al. 2016's equations step by
step, the plain LSTM as torch's nn.LSTM, the norms from their formulas.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from train_utils import tiny_config

from albert_gpt.checkpoint import load_for_inference
from albert_gpt.config import ModelConfig, config_from_dict
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.convolution import ConvLM
from albert_gpt.modeling.counting import count_parameters
from albert_gpt.modeling.factory import build_model
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.modeling.norms import CausalInstanceNorm, GroupNorm
from albert_gpt.modeling.recurrent import LSTMLM, NormedLSTMLayer, TorchLSTMLayer
from albert_gpt.training.diagnostics import DepthDiagnostics
from albert_gpt.training.trainer import train

V, B, T, H = 23, 3, 12, 16


def model_cfg(**overrides) -> ModelConfig:
    base = dict(n_layers=3, n_groups=3, n_embd=H, n_heads=2, block_size=T, vocab_size=V, dropout=0.0)
    return ModelConfig(**{**base, **overrides})


def tokens(seed: int = 0, batch: int = B, length: int = T) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- LSTM


def _ln(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    sigma = ((x - mu) ** 2).mean(-1, keepdim=True).add(eps).sqrt()
    return gamma * (x - mu) / sigma + beta


def ln_lstm_reference(layer: NormedLSTMLayer, x: torch.Tensor) -> torch.Tensor:
    """Ba et al. 2016, eq. (20)-(22), one time step at a time, with LayerNorm written out."""
    Wx, Wh, b = layer.input_proj.weight, layer.recurrent_proj.weight, layer.bias
    n_x, n_h, n_c = layer.input_norm, layer.recurrent_norm, layer.cell_norm
    h = torch.zeros(x.size(0), H)
    c = torch.zeros(x.size(0), H)
    outs = []
    for t in range(x.size(1)):
        a = _ln(h @ Wh.T, n_h.weight, n_h.bias) + _ln(x[:, t] @ Wx.T, n_x.weight, n_x.bias) + b
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(_ln(c, n_c.weight, n_c.bias))
        outs.append(h)
    return torch.stack(outs, 1)


def test_ln_lstm_cell_equals_the_papers_equations():
    torch.manual_seed(0)
    layer = NormedLSTMLayer(model_cfg(arch="lstm", norm="layernorm"))
    with torch.no_grad():  # gains and biases away from 1 and 0, so each one is checked
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(B, T, H)
    y, (h, c) = layer(x)
    ref = ln_lstm_reference(layer, x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, ref[:, -1], rtol=1e-5, atol=1e-6)


def test_input_only_ln_lstm_normalizes_the_input_term_alone():
    """`lstm_norm_sites: input`: a_t = W_h h + LN(W_x x_t) + b, the cell un-normalized (the paper's
    equations with the recurrent and cell norms removed, written out here)."""
    torch.manual_seed(0)
    layer = NormedLSTMLayer(model_cfg(arch="lstm", norm="layernorm", lstm_norm_sites="input"))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert isinstance(layer.recurrent_norm, nn.Identity) and isinstance(layer.cell_norm, nn.Identity)
    x = torch.randn(B, T, H)
    Wx, Wh, b, n_x = layer.input_proj.weight, layer.recurrent_proj.weight, layer.bias, layer.input_norm
    h, c, outs = torch.zeros(B, H), torch.zeros(B, H), []
    for t in range(T):
        a = h @ Wh.T + _ln(x[:, t] @ Wx.T, n_x.weight, n_x.bias) + b
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    torch.testing.assert_close(layer(x)[0], torch.stack(outs, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="lstm_norm_sites applies to an LSTM with a norm"):
        config_from_dict({"model": {"arch": "lstm", "norm": "none", "lstm_norm_sites": "input"}})


def _load_from_torch(layer: NormedLSTMLayer, lstm: nn.LSTM, index: int = 0) -> None:
    with torch.no_grad():
        layer.input_proj.weight.copy_(getattr(lstm, f"weight_ih_l{index}"))
        layer.recurrent_proj.weight.copy_(getattr(lstm, f"weight_hh_l{index}"))
        layer.bias.copy_(getattr(lstm, f"bias_ih_l{index}") + getattr(lstm, f"bias_hh_l{index}"))


def test_normed_cell_without_norms_computes_what_nn_lstm_computes():
    torch.manual_seed(0)
    reference = nn.LSTM(H, H, batch_first=True)
    layer = NormedLSTMLayer(model_cfg(arch="lstm", norm="none"))
    _load_from_torch(layer, reference)
    x = torch.randn(B, T, H)
    expected, (h, c) = reference(x)
    y, (h2, c2) = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c2, c[0], rtol=1e-5, atol=1e-6)


def test_plain_lstm_model_equals_a_multi_layer_nn_lstm():
    torch.manual_seed(0)
    model = LSTMLM(model_cfg(arch="lstm", norm="none", n_layers=2, n_groups=2)).eval()
    reference = nn.LSTM(H, H, num_layers=2, batch_first=True)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            assert isinstance(block, TorchLSTMLayer)
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{name}_l{i}").copy_(getattr(block.lstm, f"{name}_l0"))
    idx = tokens()
    expected, _ = reference(model.tok_emb(idx))
    logits, _ = model(idx)
    torch.testing.assert_close(logits, expected @ model.tok_emb.weight[:V].T, rtol=1e-5, atol=1e-6)


def test_shared_lstm_applies_one_layer_at_every_depth():
    torch.manual_seed(0)
    shared = LSTMLM(model_cfg(arch="lstm", norm="layernorm", n_layers=3, n_groups=1))
    assert len(shared.blocks) == 1 and shared.schedule == [0, 0, 0]
    x = torch.randn(B, T, H)
    y = x
    for _ in range(3):
        y, _ = shared.blocks[0](y)
    layers_out = shared.layer_outputs(tokens())
    assert len(layers_out) == 3
    x_emb = shared.tok_emb(tokens())
    y = x_emb
    for _ in range(3):
        y, _ = shared.blocks[0](y)
    torch.testing.assert_close(layers_out[-1], y)
    counts = count_parameters(shared)
    layer_params = sum(p.numel() for p in shared.blocks[0].parameters())
    assert counts["params_applied"] - counts["params_unique"] == 2 * layer_params


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_lstm_generation_carries_the_state(norm):
    """Greedy generation with the carried state picks what a full forward pass over the sequence picks."""
    torch.manual_seed(0)
    model = LSTMLM(model_cfg(arch="lstm", norm=norm, n_layers=2, n_groups=1)).eval()
    prompt = tokens(batch=1, length=4)
    out = model.generate(prompt, 6, top_k=1)
    for n in range(4, out.size(1)):
        logits, _ = model(out[:, :n])
        assert int(logits[0, -1].argmax()) == int(out[0, n])


def test_batchnorm_lstm_masks_padding_and_survives_a_lone_sequence():
    """Per-step BatchNorm statistics come from real tokens only; a step with one real sequence uses the
    running statistics instead of failing."""
    torch.manual_seed(0)
    model = LSTMLM(model_cfg(arch="lstm", norm="batchnorm", n_layers=1, n_groups=1)).train()
    idx = tokens()
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1:, 6:] = False  # from step 6 on, one real sequence is left
    start = {k: v.clone() for k, v in model.state_dict().items()}
    logits, _ = model(idx, valid=valid)
    assert torch.isfinite(logits).all()
    changed = idx.clone()
    changed[1:, 6:] = (changed[1:, 6:] + 1) % V  # change padding only
    model.load_state_dict(start)  # the same running statistics for the second pass
    logits2, _ = model(changed, valid=valid)
    torch.testing.assert_close(logits2[0], logits[0])  # the real sequence never saw the padding


# ---------------------------------------------------------------- conv


CAUSAL_NORMS = ["none", "layernorm", "rmsnorm", "groupnorm", "instancenorm"]


@pytest.mark.parametrize("placement", ["post", "pre"])
@pytest.mark.parametrize("norm", CAUSAL_NORMS)
def test_conv_norms_are_causal(norm, placement):
    """Changing the token at position t changes no output before t, in train mode (batch statistics)."""
    torch.manual_seed(0)
    model = ConvLM(model_cfg(arch="conv", norm=norm, norm_groups=4, norm_placement=placement)).train()
    idx = tokens()
    base, _ = model(idx)
    for t in (1, 5, T - 1):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(logits[:, t:], base[:, t:])


def test_conv_batchnorm_leaks_the_future_in_train_mode_only():
    torch.manual_seed(0)
    model = ConvLM(model_cfg(arch="conv", norm="batchnorm", n_groups=3))
    idx = tokens()
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % V
    model.train()
    leak = (model(changed)[0][:, :-1] - model(idx)[0][:, :-1]).abs().max()
    assert leak > 1e-6  # batch-and-time statistics carry the last position into every earlier one
    model.eval()
    torch.testing.assert_close(model(changed)[0][:, :-1], model(idx)[0][:, :-1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "placement, scheme, conv_std, proj_std",
    [
        ("post", "gpt2", 0.02, 0.02 / math.sqrt(16)),
        ("post", "normal", 0.02, 0.02),  # depth-independent: nothing scaled
        ("deepnorm", "gpt2", 0.02 * 128**-0.25, 0.02 * 128**-0.25),  # DeepNet's beta = (8N)^(-1/4)
    ],
)
def test_conv_init_scales_the_branch_as_its_scheme_says(placement, scheme, conv_std, proj_std):
    torch.manual_seed(0)
    model = ConvLM(
        model_cfg(
            arch="conv", n_layers=16, n_groups=16, n_embd=128, norm_placement=placement, init_scheme=scheme
        )
    )
    branch = model.blocks[0].branch
    assert branch.conv.weight.std().item() == pytest.approx(conv_std, rel=0.05)
    assert branch.proj.weight.std().item() == pytest.approx(proj_std, rel=0.05)


def test_conv_receptive_field_is_what_the_dilations_give():
    torch.manual_seed(0)
    cfg = model_cfg(arch="conv", norm="none", n_layers=3, n_groups=3, conv_dilation_cycle=2, block_size=32)
    model = ConvLM(cfg)
    assert model.dilations == [1, 2, 1]
    rf = model.receptive_field()
    assert rf == 1 + 2 * (1 + 2 + 1)
    idx = tokens(length=32)
    base, _ = model(idx)
    last = 31
    for t, reaches in ((last - rf + 1, True), (last - rf, False)):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % V
        moved = not torch.allclose(model(changed)[0][:, last], base[:, last], rtol=0, atol=0)
        assert moved == reaches, t


def test_causal_instance_norm_is_a_running_mean_and_variance():
    torch.manual_seed(0)
    norm = CausalInstanceNorm(H)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(B, T, H) * 3 + 1
    y = norm(x)
    for t in range(T):
        past = x[:, : t + 1]  # (B, t+1, H)
        mu = past.mean(1)
        var = past.var(1, correction=0)
        expected = norm.weight * (x[:, t] - mu) / torch.sqrt(var + norm.eps) + norm.bias
        torch.testing.assert_close(y[:, t], expected, rtol=1e-4, atol=1e-5)


def test_group_norm_of_one_group_is_layer_norm_and_of_g_groups_normalizes_each_group():
    torch.manual_seed(0)
    x = torch.randn(B, T, H)
    one = GroupNorm(H, 1)
    torch.testing.assert_close(one(x), F.layer_norm(x, (H,)), rtol=1e-5, atol=1e-5)
    four = GroupNorm(H, 4)
    parts = x.view(B, T, 4, H // 4)
    expected = (parts - parts.mean(-1, keepdim=True)) / torch.sqrt(
        parts.var(-1, correction=0, keepdim=True) + 1e-5
    )
    torch.testing.assert_close(four(x), expected.view(B, T, H), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["lstm", "conv"])
def test_diagnostics_report_every_depth_of_other_architectures(arch):
    torch.manual_seed(0)
    model = build_model(model_cfg(arch=arch, norm="layernorm", n_layers=4, n_groups=2))
    diag = DepthDiagnostics(model)
    x, y = tokens(1), tokens(2)
    _, loss = diag.forward(model, x, y)
    loss.backward()
    scalars = diag.after_backward()
    for depth in range(4):
        assert scalars[f"diag/depth_{depth:02d}/layer_out_rms"] > 0
        assert scalars[f"diag/depth_{depth:02d}/grad_norm_out"] > 0
    assert any(k.startswith("diag/params/block_1/") and k.endswith("_gamma_norm") for k in scalars)


# ---------------------------------------------------------------- per-depth affine (adaptive normalization)


def test_per_depth_affine_starts_as_the_shared_model_and_counts_its_parameters():
    cfg = model_cfg(n_layers=4, n_groups=1)
    torch.manual_seed(0)
    shared = AlbertGPT(cfg)
    torch.manual_seed(0)
    adaptive = AlbertGPT(dataclasses.replace(cfg, norm_per_depth_affine=True))
    assert len(adaptive.blocks) == 4 and adaptive.blocks[1].attn is adaptive.blocks[0].attn
    gammas = {id(b.attn_norm.weight) for b in adaptive.blocks}
    assert len(gammas) == 4
    for block in adaptive.blocks:  # every depth starts at the shared gain and bias
        torch.testing.assert_close(block.ffn_norm.weight, shared.blocks[0].ffn_norm.weight)
        torch.testing.assert_close(block.ffn_norm.bias, shared.blocks[0].ffn_norm.bias)
    idx = tokens()
    torch.testing.assert_close(adaptive(idx)[0], shared(idx)[0], rtol=0, atol=0)
    added = count_parameters(adaptive)["params_unique"] - count_parameters(shared)["params_unique"]
    assert added == 3 * 2 * 2 * H  # 3 more depths x 2 norms x (gamma + beta)
    applied = count_parameters(adaptive)["params_applied"] - count_parameters(shared)["params_applied"]
    assert applied == 0  # each depth applies its own norm once instead of the shared one


def test_per_depth_affine_trains_saves_and_loads(tmp_path):
    cfg = tiny_config(
        tmp_path, model={"n_layers": 3, "n_groups": 1, "norm_per_depth_affine": True}, train={"max_steps": 6}
    )
    train(cfg)
    _, model, _ = load_for_inference(cfg.run_dir)
    gammas = [b.attn_norm.weight for b in model.blocks]
    assert len({id(g) for g in gammas}) == 3
    assert not torch.equal(gammas[0], gammas[2])  # each depth learned its own gain
    assert model.blocks[2].attn is model.blocks[0].attn  # the shared weights stay shared after loading


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"norm": "groupnorm"}, "model.norm: groupnorm is not available for model.arch transformer"),
        (
            {"arch": "lstm", "norm": "instancenorm"},
            "model.norm: instancenorm is not available for model.arch lstm",
        ),
        ({"arch": "conv", "norm": "groupnorm", "norm_groups": 5}, "model.norm_groups (5) must divide"),
        ({"arch": "lstm", "norm_placement": "pre"}, "model.norm_placement applies to transformer and conv"),
        ({"arch": "conv", "sharing": "ffn"}, "model.sharing: ffn applies to transformer blocks only"),
        ({"arch": "lstm", "norm_per_depth_affine": True}, "model.norm_per_depth_affine applies to shared"),
        ({"norm": "adaptive_layernorm", "norm_per_depth_affine": True}, "needs a norm with a gain and bias"),
        ({"arch": "conv", "norm": "batchnorm", "n_layers": 4, "n_groups": 1}, "model.batch_stats: per-depth"),
    ],
)
def test_architecture_config_errors_name_the_key(model, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict({"model": model})


@pytest.mark.parametrize("arch", ["lstm", "conv"])
def test_cli_trains_evaluates_generates_and_counts_other_architectures(tmp_path, capsys, arch):
    """The same commands serve every architecture: train, eval (perplexity, bits per byte), generate, info."""
    import json

    import yaml
    from train_utils import tiny_raw

    from albert_gpt.cli import main

    raw = tiny_raw(tmp_path, model={"arch": arch, "norm": "layernorm", "n_groups": 2}, train={"max_steps": 4})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["train", str(path)]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)
    assert 0 < result["bits_per_byte"] < 10
    assert main(["generate", str(run_dir), "--prompt", "the", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the")
    assert main(["info", str(path)]) == 0
    assert f"model   {arch}: 2 layers from 2 group(s)" in capsys.readouterr().out
