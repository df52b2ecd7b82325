"""The model against torch.nn.TransformerEncoderLayer, hand formulas and the causal contract.

Shapes: B batch, T tokens, H hidden, V vocabulary.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from albert_gpt.config import ModelConfig
from albert_gpt.errors import ConfigError
from albert_gpt.modeling.block import TRACE_POINTS, Block
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.modeling.sharing import new_block

H, HEADS, V, T = 16, 4, 23, 12


def tiny(**overrides) -> ModelConfig:
    base = dict(n_layers=3, n_embd=H, n_heads=HEADS, block_size=T, vocab_size=V)
    return ModelConfig(**{**base, **overrides})


def _randomize_norms(module: nn.Module) -> None:
    """Non-trivial gamma/beta so that copying them (or not) matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p))


def _reference_layer(block: Block, norm_first: bool) -> nn.TransformerEncoderLayer:
    ref = nn.TransformerEncoderLayer(
        H,
        HEADS,
        dim_feedforward=4 * H,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=norm_first,
    )
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(block.attn.proj.weight)
        ref.self_attn.out_proj.bias.copy_(block.attn.proj.bias)
        ref.linear1.weight.copy_(block.ffn.fc.weight)
        ref.linear1.bias.copy_(block.ffn.fc.bias)
        ref.linear2.weight.copy_(block.ffn.proj.weight)
        ref.linear2.bias.copy_(block.ffn.proj.bias)
        for ours, theirs in ((block.attn_norm, ref.norm1), (block.ffn_norm, ref.norm2)):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
    return ref


@pytest.mark.parametrize("placement, norm_first", [("post", False), ("pre", True)])
def test_block_matches_transformer_encoder_layer(placement, norm_first):
    """One unshared block equals nn.TransformerEncoderLayer with the same weights and a causal mask."""
    torch.manual_seed(0)
    block = new_block(tiny(n_layers=1, norm_placement=placement))
    _randomize_norms(block)
    ref = _reference_layer(block, norm_first)
    block.eval()
    ref.eval()
    x = torch.randn(2, T, H)
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    expected = ref(x, src_mask=mask, is_causal=True)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)
    # The other placement computes something else: the comparison can tell them apart.
    other = new_block(tiny(n_layers=1, norm_placement="pre" if placement == "post" else "post"))
    other.load_state_dict(block.state_dict())
    assert not torch.allclose(other.eval()(x), expected, atol=1e-3)


def test_deepnorm_block_follows_its_formula():
    """A DeepNorm block computes LN(alpha*x + f(x)) per sub-layer with alpha = (2N)^(1/4)."""
    torch.manual_seed(0)
    cfg = tiny(n_layers=8, norm_placement="deepnorm")
    block = new_block(cfg).eval()
    _randomize_norms(block)
    alpha = 16**0.25
    assert block.alpha == pytest.approx(alpha)
    x = torch.randn(2, T, H)
    h = block.attn_norm(alpha * x + block.attn(x))
    expected = block.ffn_norm(alpha * h + block.ffn(h))
    torch.testing.assert_close(block(x), expected)


def test_placement_none_has_no_norms():
    """`norm_placement: none`, `final_norm: false`: no norm parameters at all, and x + f(x)."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(norm_placement="none", final_norm=False))
    assert not any("norm" in name for name, _ in model.named_parameters())
    block = model.blocks[0].eval()
    x = torch.randn(1, T, H)
    h = x + block.attn(x)
    torch.testing.assert_close(block(x), h + block.ffn(h))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"norm_placement": "pre", "embedding_dim": 8},
        {"norm_placement": "deepnorm", "norm": "rmsnorm"},
        {"norm_placement": "none"},
        {"norm": "adaptive_layernorm", "sharing": "ffn"},
        {"norm": "batchnorm"},  # eval mode: running statistics, so causal
    ],
)
def test_future_tokens_never_change_past_logits(overrides):
    """Changing tokens t+1.. leaves the logits at positions <= t unchanged."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(**overrides)).eval()
    idx = torch.randint(0, V, (2, T))
    logits, _ = model(idx)
    for t in (0, 5, T - 2):
        changed = idx.clone()
        changed[:, t + 1 :] = (
            changed[:, t + 1 :] + 1 + torch.randint(0, V - 1, changed[:, t + 1 :].shape)
        ) % V
        new_logits, _ = model(changed)
        torch.testing.assert_close(new_logits[:, : t + 1], logits[:, : t + 1], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(new_logits[:, t + 1 :], logits[:, t + 1 :])


def test_batchnorm_in_train_mode_leaks_the_future():
    """BatchNorm's train-mode statistics mix positions: the documented reason it is only a comparison."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(norm="batchnorm"))
    idx = torch.randint(0, V, (2, T))
    changed = idx.clone()
    changed[:, -1] = (changed[:, -1] + 1) % V
    assert not torch.allclose(model(idx)[0][:, 0], model(changed)[0][:, 0])


def test_logits_cover_vocab_only_and_loss_is_cross_entropy():
    """The table is padded to pad_vocab_multiple, logits are (B, T, V), loss = F.cross_entropy(ignore -1)."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(pad_vocab_multiple=16))
    assert model.tok_emb.weight.shape == (32, H)
    idx = torch.randint(0, V, (2, T))
    targets = torch.randint(0, V, (2, T))
    targets[0, :4] = -1
    logits, loss = model(idx, targets)
    assert logits.shape == (2, T, V)
    expected = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1)
    torch.testing.assert_close(loss, expected)
    assert model(idx)[1] is None


def test_missing_vocab_size_is_a_config_error():
    """Building without model.vocab_size raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match="model.vocab_size"):
        AlbertGPT(tiny(vocab_size=None))


def test_factorized_embedding_and_tied_head():
    """E < H: Embedding(Vp, E) + Linear(E, H); the head is Linear(H, E) then the token table itself."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(embedding_dim=8, norm_placement="pre")).eval()
    assert model.tok_emb.weight.shape == (V, 8)
    assert model.emb_proj.weight.shape == (H, 8) and model.head_proj.weight.shape == (8, H)
    assert model.pos_emb.weight.shape == (T, H)
    # The token table is the only vocabulary-sized parameter: the head owns no copy.
    assert [n for n, p in model.named_parameters() if p.shape[0] == V] == ["tok_emb.weight"]
    idx = torch.randint(0, V, (1, T))
    x = model.emb_proj(model.tok_emb(idx)) + model.pos_emb(torch.arange(T))
    for i in model.schedule:
        x = model.blocks[i](x)
    expected = model.head_proj(model.final_norm(x)) @ model.tok_emb.weight.T
    torch.testing.assert_close(model(idx)[0], expected, atol=1e-5, rtol=1e-5)


def test_parameter_order_is_the_order_checkpoints_hold():
    """Built through CausalLM's shared helper, a factorized model still registers head_proj last: the order
    of parameters is the order of the init's draws and of a saved optimizer state."""
    def order(**kw: object) -> list[str]:
        return list(dict.fromkeys(n.split(".")[0] for n, _ in AlbertGPT(tiny(**kw)).named_parameters()))

    assert order(embedding_dim=8) == ["tok_emb", "emb_proj", "pos_emb", "blocks", "head_proj"]  # post-LN
    assert order(embedding_dim=8, norm_placement="pre") == [
        "tok_emb", "emb_proj", "pos_emb", "blocks", "final_norm", "head_proj"]
    assert order() == ["tok_emb", "pos_emb", "blocks"]


def test_gpt2_init_scales_residual_projections():
    """Weights ~ N(0, 0.02), output projections ~ N(0, 0.02/sqrt(2N)), zero biases, unit gammas."""
    torch.manual_seed(0)
    cfg = tiny(n_layers=8, n_embd=128, n_heads=4, n_groups=8)
    model = AlbertGPT(cfg)
    block = model.blocks[0]
    scaled = 0.02 / math.sqrt(16)
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.ffn.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.ffn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert torch.count_nonzero(block.attn.qkv.bias) == 0
    assert torch.equal(block.attn_norm.weight, torch.ones(128))


@pytest.mark.parametrize("n_layers", [2, 32])
def test_normal_init_scales_nothing_with_depth(n_layers):
    """`init_scheme: normal`: every weight ~ N(0, 0.02) whatever the depth (the depth-independent arm)."""
    torch.manual_seed(0)
    block = AlbertGPT(tiny(n_layers=n_layers, n_embd=128, n_heads=4, init_scheme="normal")).blocks[0]
    for w in (block.attn.qkv.weight, block.attn.proj.weight, block.ffn.fc.weight, block.ffn.proj.weight):
        assert w.std().item() == pytest.approx(0.02, rel=0.05)


def test_deepnorm_init_scales_value_ffn_and_output_by_beta():
    """DeepNorm: value rows, FFN and output projections ~ N(0, 0.02 * (8N)^(-1/4)); q and k stay 0.02."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(n_layers=8, n_embd=128, n_heads=4, norm_placement="deepnorm"))
    block = model.blocks[0]
    beta_std = 0.02 * 64**-0.25
    qkv = block.attn.qkv.weight
    assert qkv[: 2 * 128].std().item() == pytest.approx(0.02, rel=0.05)
    assert qkv[2 * 128 :].std().item() == pytest.approx(beta_std, rel=0.05)
    for w in (block.attn.proj.weight, block.ffn.fc.weight, block.ffn.proj.weight):
        assert w.std().item() == pytest.approx(beta_std, rel=0.05)


@pytest.mark.parametrize("placement", ["post", "pre", "deepnorm", "none"])
def test_tracer_sees_every_point_and_changes_nothing(placement):
    """A traced forward reports every point per application, in depth order, the residual stream
    before and after each sub-layer among them, and gives exactly the untraced result."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(norm_placement=placement, n_groups=1)).eval()
    idx = torch.randint(0, V, (2, T))
    seen: list[tuple[int, str, torch.Tensor]] = []
    traced, _ = model(idx, tracer=lambda d, p, t: seen.append((d, p, t)))
    assert torch.equal(traced, model(idx)[0])
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    for d in range(3):
        names = [p for depth, p, _ in seen if depth == d]
        assert sorted(names) == sorted(TRACE_POINTS) and len(names) == len(TRACE_POINTS)
        assert names[0] == "layer_in" and names[-1] == "layer_out"
    points = {(d, p): t for d, p, t in seen}
    block = model.blocks[0]
    alpha = block.alpha
    for d in range(3):
        stream = points[d, "layer_in"]
        for sub, norm in (("attn", block.attn_norm), ("ffn", block.ffn_norm)):
            branch, out = points[d, f"{sub}_branch"], points[d, f"{sub}_stream"]
            torch.testing.assert_close(points[d, f"{sub}_residual"], alpha * stream)
            torch.testing.assert_close(points[d, f"{sub}_norm_out"], norm(points[d, f"{sub}_norm_in"]))
            if placement in ("post", "deepnorm"):  # the stream is normalized: LN(alpha * x + f(x))
                torch.testing.assert_close(points[d, f"{sub}_norm_in"], alpha * stream + branch)
                torch.testing.assert_close(out, points[d, f"{sub}_norm_out"])
            else:  # the norm reads the stream, the stream adds the branch: x + f(LN(x))
                torch.testing.assert_close(points[d, f"{sub}_norm_in"], stream)
                torch.testing.assert_close(out, stream + branch)
            stream = out
        torch.testing.assert_close(points[d, "layer_out"], stream)
    for d in range(2):
        assert points[d, "layer_out"] is points[d + 1, "layer_in"]


def test_block_wiring_is_decided_at_construction():
    """The placement string is read once: each block holds its wiring as plain attributes."""
    wiring = {p: (new_block(tiny(norm_placement=p)).norm_first, new_block(tiny(norm_placement=p)).alpha)
              for p in ("post", "pre", "deepnorm", "none")}
    assert wiring == {"post": (False, 1.0), "pre": (True, 1.0), "deepnorm": (False, (2 * 3) ** 0.25),
                      "none": (True, 1.0)}
    assert not hasattr(new_block(tiny()), "placement")


def test_layer_outputs_one_per_application():
    """layer_outputs returns n_layers tensors (B, T, H); applying the head to the last gives the logits."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(n_layers=4, n_groups=2)).eval()
    idx = torch.randint(0, V, (2, T))
    outputs = model.layer_outputs(idx)
    assert len(outputs) == 4 and all(o.shape == (2, T, H) for o in outputs)
    torch.testing.assert_close(model.head(outputs[-1]), model(idx)[0])
    # The second application of the shared block 0 maps layer 0's output to layer 1's.
    torch.testing.assert_close(model.blocks[0](outputs[0]), outputs[1])


def test_dropout_only_in_train_mode():
    """With dropout > 0 two train-mode passes differ; eval-mode passes are identical."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(dropout=0.3))
    idx = torch.randint(0, V, (2, T))
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0])


def test_sequence_longer_than_context_is_rejected():
    """forward on more than block_size tokens raises a ValueError naming block_size."""
    model = AlbertGPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, T + 1, dtype=torch.long))


def test_state_dict_round_trip_preserves_outputs():
    """A fresh model loaded with another's state_dict computes the same logits (shared modules too)."""
    torch.manual_seed(0)
    cfg = tiny(sharing="attention", n_layers=4, n_groups=2, embedding_dim=8)
    a = AlbertGPT(cfg).eval()
    torch.manual_seed(1)
    b = AlbertGPT(dataclasses.replace(cfg)).eval()
    idx = torch.randint(0, V, (2, T))
    assert not torch.allclose(a(idx)[0], b(idx)[0])
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(idx)[0], b(idx)[0])


@pytest.mark.parametrize("placement", ["none", "pre"])
def test_final_norm_normalizes_the_stream_before_the_head(placement):
    """final_norm true (the default) puts a LayerNorm between the last application and the head; false
    hands the raw stream to the head. Both are checked against the head applied by hand."""
    torch.manual_seed(0)
    on = AlbertGPT(tiny(norm_placement=placement)).eval()
    off = AlbertGPT(tiny(norm_placement=placement, final_norm=False)).eval()
    assert sum(p.numel() for p in on.final_norm.parameters()) == 2 * H
    assert isinstance(off.final_norm, nn.Identity)
    assert sum(p.numel() for p in on.parameters()) - sum(p.numel() for p in off.parameters()) == 2 * H
    _randomize_norms(on)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("final_norm.")})
    idx = torch.randint(0, V, (2, T))
    stream = on.layer_outputs(idx)[-1]
    torch.testing.assert_close(on(idx)[0], F.linear(on.final_norm(stream), on.tok_emb.weight))
    torch.testing.assert_close(off(idx)[0], F.linear(stream, on.tok_emb.weight))
    expected = F.layer_norm(stream, (H,), on.final_norm.weight, on.final_norm.bias)
    torch.testing.assert_close(on.final_norm(stream), expected)


@pytest.mark.parametrize("placement", ["post", "deepnorm"])
def test_final_norm_adds_nothing_where_blocks_end_in_a_norm(placement):
    """Post-LN and DeepNorm blocks already hand the head a normalized stream: the flag changes nothing."""
    torch.manual_seed(0)
    on = AlbertGPT(tiny(norm_placement=placement, final_norm=True)).eval()
    torch.manual_seed(0)
    off = AlbertGPT(tiny(norm_placement=placement, final_norm=False)).eval()
    assert isinstance(on.final_norm, nn.Identity)
    idx = torch.randint(0, V, (2, T))
    assert torch.equal(on(idx)[0], off(idx)[0])
