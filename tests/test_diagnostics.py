"""Per-depth diagnostics against hand computations on tiny models.

Shapes: B batch, T tokens, H hidden, V vocabulary, L layer applications.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.training.diagnostics import DepthDiagnostics

B, T, H, V = 3, 6, 8, 13

PER_DEPTH_KEYS = (
    "attn_norm_in_rms", "attn_norm_out_mean", "attn_norm_out_std", "attn_update_ratio",
    "ffn_norm_in_rms", "ffn_norm_out_mean", "ffn_norm_out_std", "ffn_update_ratio",
    "grad_norm_out", "io_l2", "io_angle_deg", "layer_out_rms",
)


def tiny_model(seed: int = 0, **overrides) -> AlbertGPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(n_layers=2, n_groups=1, n_embd=H, n_heads=2, block_size=T, vocab_size=V),
                         **overrides})
    model = AlbertGPT(cfg)
    with torch.no_grad():  # non-trivial gamma / beta, so a wrong norm shows up in the numbers
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)


def diagnose(model: AlbertGPT, x: torch.Tensor, y: torch.Tensor, loss_factor: float = 1.0):
    diag = DepthDiagnostics(model)
    with diag.capture():
        _, loss = model(x, y, tracer=diag.tracer)
    (loss * loss_factor).backward()
    return diag, diag.after_backward(activation_grad_scale=loss_factor)


def fro(t: torch.Tensor) -> float:
    return torch.linalg.vector_norm(t).item()


def test_shared_model_reports_every_depth_separately():
    """n_layers=4 applications of one shared block give four depths of statistics, not one."""
    model = tiny_model(n_layers=4, n_groups=1)
    _, scalars = diagnose(model, *batch())
    for depth in range(4):
        for key in PER_DEPTH_KEYS:
            assert f"diag/depth_{depth:02d}/{key}" in scalars, (depth, key)
    assert not any(k.startswith("diag/depth_04/") for k in scalars)
    # One module, four applications: its statistics still differ with depth.
    io = [scalars[f"diag/depth_{d:02d}/io_l2"] for d in range(4)]
    assert len(set(io)) == 4
    assert [k for k in scalars if k.startswith("diag/params/block_")] == [
        k for k in scalars if k.startswith("diag/params/block_0/")
    ]


@pytest.mark.parametrize("placement", ["post", "pre", "deepnorm"])
def test_activation_statistics_match_hand_computation(placement):
    """Update ratios, norm-input RMS, norm-output moments and input/output distance, by hand."""
    model = tiny_model(norm_placement=placement)
    x, y = batch()
    _, scalars = diagnose(model, x, y)
    block = model.blocks[0]
    alpha = (2 * 2) ** 0.25 if placement == "deepnorm" else 1.0
    with torch.no_grad():
        h = model.tok_emb(x) + model.pos_emb(torch.arange(T))  # (B, T, H)
        for depth in range(2):
            key = f"diag/depth_{depth:02d}/"
            layer_in = h
            for name, f, norm in (("attn", block.attn, block.attn_norm), ("ffn", block.ffn, block.ffn_norm)):
                if placement == "pre":
                    norm_in, norm_out = h, norm(h)
                    branch = f(norm_out)
                    h_next = h + branch
                else:
                    branch = f(h)
                    norm_in = alpha * h + branch
                    norm_out = h_next = norm(norm_in)
                ratio = fro(branch) / (alpha * fro(h))
                assert scalars[key + f"{name}_update_ratio"] == pytest.approx(ratio, rel=1e-5)
                rms = (norm_in.norm(dim=-1) / math.sqrt(H)).mean().item()
                assert scalars[key + f"{name}_norm_in_rms"] == pytest.approx(rms, rel=1e-5)
                mean = norm_out.mean().item()
                assert scalars[key + f"{name}_norm_out_mean"] == pytest.approx(mean, abs=1e-6)
                std = norm_out.std(correction=0).item()
                assert scalars[key + f"{name}_norm_out_std"] == pytest.approx(std, rel=1e-5)
                h = h_next
            out = h
            dist = (out - layer_in).norm(dim=-1).mean().item()
            assert scalars[key + "io_l2"] == pytest.approx(dist, rel=1e-5)
            cos = (out * layer_in).sum(-1) / (out.norm(dim=-1) * layer_in.norm(dim=-1))
            angle = torch.rad2deg(torch.arccos(cos)).mean().item()
            assert scalars[key + "io_angle_deg"] == pytest.approx(angle, rel=1e-4)


def test_gradient_norms_match_autograd():
    """grad_norm_out equals autograd's gradient of the loss at each application's output."""
    model = tiny_model(n_layers=3)
    x, y = batch()
    # Reference: the block's outputs caught by a forward hook (one call per application).
    outputs = []
    handle = model.blocks[0].register_forward_hook(lambda mod, inp, out: outputs.append(out))
    logits, _ = model(x)
    handle.remove()
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    expected = [fro(g) for g in torch.autograd.grad(loss, outputs)]
    assert len(expected) == 3 and expected[0] != expected[2]

    _, scalars = diagnose(model, x, y)
    got = [scalars[f"diag/depth_{d:02d}/grad_norm_out"] for d in range(3)]
    assert got == pytest.approx(expected, rel=1e-5)


def test_activation_grad_scale_undoes_the_loss_factor():
    """A loss multiplied by 8 before backward, declared as such, reports the unscaled norms."""
    x, y = batch()
    _, plain = diagnose(tiny_model(), x, y)
    _, scaled = diagnose(tiny_model(), x, y, loss_factor=8.0)
    key = "diag/depth_01/grad_norm_out"
    assert scaled[key] == pytest.approx(plain[key], rel=1e-5)


def test_parameter_gradient_norms_match_hand_computation():
    """Per-group gradient norms are the 2-norm of the group's gradients; gamma/beta norms likewise."""
    model = tiny_model()
    _, scalars = diagnose(model, *batch())
    block = model.blocks[0]
    for part in ("attn", "ffn", "attn_norm", "ffn_norm"):
        grads = torch.cat([p.grad.reshape(-1) for p in getattr(block, part).parameters()])
        assert scalars[f"diag/params/block_0/{part}_grad_norm"] == pytest.approx(fro(grads), rel=1e-5)
    prefix = "diag/params/block_0/"
    assert scalars[prefix + "attn_norm_gamma_norm"] == pytest.approx(fro(block.attn_norm.weight), rel=1e-6)
    assert scalars[prefix + "ffn_norm_beta_norm"] == pytest.approx(fro(block.ffn_norm.bias), rel=1e-6)
    emb = torch.cat([model.tok_emb.weight.grad.reshape(-1), model.pos_emb.weight.grad.reshape(-1)])
    assert scalars["diag/params/embeddings/grad_norm"] == pytest.approx(fro(emb), rel=1e-5)


def test_partially_shared_sublayer_is_reported_once():
    """With attention shared across 2 layers, its group appears once and each FFN separately."""
    model = tiny_model(sharing="attention")
    _, scalars = diagnose(model, *batch())
    assert "diag/params/block_0/attn_grad_norm" in scalars
    assert "diag/params/block_1/attn_grad_norm" not in scalars
    assert "diag/params/block_1/ffn_grad_norm" in scalars


def test_histograms_hold_final_hidden_and_per_depth_gradients():
    """The final-hidden histogram holds the last application's output; the other, one norm per depth."""
    model = tiny_model(n_layers=3)
    x, y = batch()
    diag, scalars = diagnose(model, x, y)
    with torch.no_grad():
        last = model.layer_outputs(x)[-1]
    assert torch.allclose(diag.histograms["diag/hist/final_hidden"], last.reshape(-1), atol=1e-6)
    per_depth = [scalars[f"diag/depth_{d:02d}/grad_norm_out"] for d in range(3)]
    assert diag.histograms["diag/hist/grad_norm_by_depth"].tolist() == pytest.approx(per_depth)


def test_diagnostics_off_registers_no_hooks(monkeypatch):
    """Without a tracer (or outside capture) no tensor or module hook is ever registered."""
    calls = _count_register_hook(monkeypatch)
    model = tiny_model(n_layers=4)
    diag = DepthDiagnostics(model)
    x, y = batch()
    model(x, y)[1].backward()
    model(x, y, tracer=diag.tracer)[1].backward()  # a tracer outside capture() records nothing
    assert calls == []
    assert diag.after_backward() == {
        k: v for k, v in diag.after_backward().items() if k.startswith("diag/params/")
    }
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    with diag.capture():  # the positive control: on, one hook per application
        loss = model(x, y, tracer=diag.tracer)[1]
    loss.backward()
    assert len(calls) == 4


def _count_register_hook(monkeypatch) -> list:
    calls = []
    original = torch.Tensor.register_hook

    def counting(self, hook):
        calls.append(hook)
        return original(self, hook)

    monkeypatch.setattr(torch.Tensor, "register_hook", counting)
    return calls


@pytest.mark.parametrize("interval", [0, 2])
def test_training_logs_diagnostics_only_at_the_interval(tmp_path, monkeypatch, interval):
    """log.diagnostics_interval 2 over 4 steps of a 2-layer model: diag/ scalars at steps 2 and 4
    (metrics.jsonl), histograms in TensorBoard, 2 x 2 activation hooks; interval 0: none of it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from train_utils import tiny_config

    from albert_gpt.training.metrics import read_metrics
    from albert_gpt.training.trainer import train

    calls = _count_register_hook(monkeypatch)
    cfg = tiny_config(tmp_path, train={"max_steps": 4, "checkpoint_interval": 0},
                      eval={"interval": 0, "sample_tokens": 0}, log={"diagnostics_interval": interval})
    train(cfg)
    records = read_metrics(cfg.run_dir / "metrics.jsonl")
    diag_steps = {r["step"] for r in records if r["tag"].startswith("diag/")}
    tags = {r["tag"] for r in records}
    events = EventAccumulator(str(cfg.run_dir), size_guidance={"histograms": 0})
    events.Reload()
    histograms = set(events.Tags()["histograms"])
    if interval == 0:
        assert calls == [] and diag_steps == set() and histograms == set()
    else:
        assert len(calls) == 4 and diag_steps == {2, 4}
        assert {"diag/depth_00/grad_norm_out", "diag/depth_01/io_angle_deg",
                "diag/params/block_0/attn_grad_norm", "diag/params/embeddings/grad_norm"} <= tags
        assert histograms == {"diag/hist/final_hidden", "diag/hist/grad_norm_by_depth"}
        assert [e.step for e in events.Histograms("diag/hist/final_hidden")] == [2, 4]


def test_unshared_copy_splits_the_shared_gradient_by_application():
    """E1's device: an unshared copy computes the same logits, and its per-layer W2 gradients sum
    to the shared model's W2 gradient (autograd on the shared model as the reference)."""
    from albert_gpt.study.grad_at_init import ffn_out_grad_norms, unshared_copy

    model = tiny_model(n_layers=3)
    copy = unshared_copy(model)
    x, y = batch()
    assert len(copy.blocks) == 3 and copy.blocks[0] is not copy.blocks[1]
    assert torch.allclose(copy(x)[0], model(x)[0], atol=1e-6)
    model(x, y)[1].backward()
    norms = ffn_out_grad_norms(copy, x, y)
    per_layer = [copy.blocks[i].ffn.proj.weight.grad for i in range(3)]
    assert norms == pytest.approx([fro(g) for g in per_layer])
    assert torch.allclose(sum(per_layer), model.blocks[0].ffn.proj.weight.grad, atol=1e-7)


def test_gradients_at_init_covers_every_combination(tmp_path):
    """One row per init x placement x sharing x depth; unshared rows report their last layer."""
    from train_utils import tiny_config

    from albert_gpt.study.grad_at_init import gradients_at_init

    rows = gradients_at_init(tiny_config(tmp_path), depths=[1, 2], seeds=(1,), batches=1)
    keys = {(r["init"], r["placement"], r["sharing"], r["n_layers"]) for r in rows}
    assert len(rows) == len(keys) == 16
    for r in rows:
        assert r["last_w2_grad"] > 0 and len(r["per_layer_w2_grad"]) == r["n_layers"]
        assert r["last_w2_grad"] == pytest.approx(r["per_layer_w2_grad"][-1])
        assert (r["shared_total_w2_grad"] is None) == (r["sharing"] == "unshared")
