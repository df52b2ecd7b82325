"""generate() with its KV cache against full forward passes, and the sampling rules.

Shapes: B batch, T tokens, V vocabulary.
"""

import pytest
import torch

from albert_gpt.config import ModelConfig
from albert_gpt.modeling.model import AlbertGPT
from albert_gpt.modeling.sampling import sample_next

V, T = 29, 16


def tiny(**overrides) -> ModelConfig:
    base = dict(n_layers=3, n_embd=16, n_heads=2, block_size=T, vocab_size=V)
    return ModelConfig(**{**base, **overrides})


def _greedy_by_full_forward(model: AlbertGPT, idx: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference: a full forward over the (left-cropped) context for every new token."""
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(idx[:, -T:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"sharing": "attention", "n_groups": 3, "norm_placement": "pre", "embedding_dim": 8},
        {"norm_placement": "deepnorm", "norm": "adaptive_layernorm", "pad_vocab_multiple": 8},
    ],
)
def test_greedy_generate_with_cache_equals_full_forward(overrides):
    """Greedy tokens from the cached path equal those of repeated full passes, past block_size too."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(**overrides)).eval()
    # Larger weights than the init make the argmax decisive, so tiny float differences cannot flip it.
    with torch.no_grad():
        model.tok_emb.weight.mul_(20)
    prompt = torch.randint(0, V, (2, 5))
    steps = 2 * T  # runs well past the context, exercising the cropped rebuilds
    expected = _greedy_by_full_forward(model, prompt, steps)
    got = model.generate(prompt, steps, temperature=0.0)
    assert got.shape == (2, 5 + steps)
    assert torch.equal(got, expected)


def test_cached_logits_equal_full_forward_logits():
    """Prefill, then a 3-token chunk, then single tokens: each step's logits match the full pass."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(n_groups=1)).eval()
    idx = torch.randint(0, V, (2, T))
    full, _ = model(idx)
    caches = model.new_kv_caches()
    with torch.no_grad():
        pieces = [model.forward_cached(idx[:, :6], caches), model.forward_cached(idx[:, 6:9], caches)]
        pieces += [model.forward_cached(idx[:, t : t + 1], caches) for t in range(9, T)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert [c.length for c in caches] == [T] * 3


def test_generate_restores_training_mode_and_ignores_dropout():
    """generate runs in eval mode (dropout off) and leaves the model in the mode it found."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny(dropout=0.5))
    prompt = torch.randint(0, V, (1, 4))
    first = model.generate(prompt, 8, temperature=0.0)
    assert model.training
    assert torch.equal(first, model.generate(prompt, 8, temperature=0.0))


def test_same_generator_seed_same_sample():
    """Sampling is a function of the generator's seed: equal seeds agree, another seed differs."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny()).eval()
    prompt = torch.randint(0, V, (1, 3))

    def run(seed: int) -> torch.Tensor:
        return model.generate(prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_stops_at_eot_and_streams_tokens():
    """With batch size 1, on_token sees each new token and generation ends with eot_id."""
    torch.manual_seed(0)
    model = AlbertGPT(tiny()).eval()
    prompt = torch.randint(0, V, (1, 3))
    free = model.generate(prompt, 10, temperature=0.0)
    eot = int(free[0, 6])  # the greedy token produced at the 4th step
    first = free[0, 3:].tolist().index(eot) + 3
    streamed: list[int] = []
    out = model.generate(prompt, 10, temperature=0.0, eot_id=eot, on_token=streamed.append)
    assert out[0].tolist() == free[0, : first + 1].tolist()
    assert streamed == out[0, 3:].tolist()


def test_bad_generation_arguments():
    """Negative temperature, top_k < 1, top_p outside (0, 1] and empty prompts raise ValueError."""
    model = AlbertGPT(tiny())
    prompt = torch.zeros(1, 2, dtype=torch.long)
    for kwargs in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            model.generate(prompt, 2, **kwargs)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)


LOGITS = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))


def _draws(n: int = 400, **kwargs) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    return {int(sample_next(LOGITS, generator=generator, **kwargs)) for _ in range(n)}


def test_sampling_filters():
    """top_k keeps the k most likely tokens; top_p keeps the smallest set whose mass reaches p."""
    assert _draws() == {0, 1, 2, 3}
    assert _draws(top_k=2) == {1, 3}
    assert _draws(top_p=0.75) == {1, 3}  # 0.5 + 0.3 reaches 0.75
    assert _draws(top_p=0.85) == {1, 3, 2}  # 0.8 does not reach 0.85
    assert _draws(top_p=0.01) == {1}
    assert int(sample_next(LOGITS, temperature=0.0)) == 1


def test_low_temperature_sharpens_distribution():
    """Temperature 0.05 on these logits almost always picks the argmax; temperature 1 often does not."""
    generator = torch.Generator().manual_seed(0)
    cold = [int(sample_next(LOGITS, 0.05, generator=generator)) for _ in range(200)]
    warm = [int(sample_next(LOGITS, 1.0, generator=generator)) for _ in range(200)]
    assert cold.count(1) == 200
    assert warm.count(1) < 150
