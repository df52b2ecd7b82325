"""An albert_gpt model for Hugging Face transformers (trust_remote_code): the same computation as
albert_gpt's AlbertGPT, written with torch and transformers alone.

Each layer application d runs attention module attn_of_depth[d] and FFN ffn_of_depth[d], each with its
norm, wired as the config's `norm_first`, `residual_alpha` and `block_norms` say: post x = LN(x + f(x)),
pre x = x + f(LN(x)), deepnorm x = LN(alpha x + f(x)), none x = x + f(x). Shared modules are stored once.
Generation reuses keys and values through the cache transformers passes in (one cache layer per application).

Shapes: B batch, T new tokens, S cached + new tokens, H hidden, nh heads, hs = H / nh, V vocabulary.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from .configuration_albert_gpt import AlbertGPTConfig
except ImportError:  # loaded as a plain module, outside a package
    from configuration_albert_gpt import AlbertGPTConfig  # type: ignore[no-redef]

# transformers renamed `past_key_values` to `cache` (5.x); read and return whichever this version uses.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _norm(config):
    if config.norm == "none":
        return nn.Identity()
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps, elementwise_affine=config.norm_affine)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps, elementwise_affine=config.norm_affine)
    raise ValueError(f"norm {config.norm!r} is not supported here")


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, mask, cache, depth):
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, H // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, depth)  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, H))


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn_mult * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.ffn_mult * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class AlbertGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = AlbertGPTConfig
    base_model_prefix = "albert_gpt"
    main_input_name = "input_ids"
    _supports_cache_class = True

    def __init__(self, config):
        super().__init__(config)
        c = config
        factorized = c.embedding_dim < c.n_embd
        self.tok_emb = nn.Embedding(c.padded_vocab_size, c.embedding_dim)
        self.emb_proj = nn.Linear(c.embedding_dim, c.n_embd, bias=c.bias) if factorized else None
        self.pos_emb = nn.Embedding(c.block_size, c.n_embd)
        self.attns = nn.ModuleList(Attention(c) for _ in range(max(c.attn_of_depth) + 1))
        self.ffns = nn.ModuleList(FeedForward(c) for _ in range(max(c.ffn_of_depth) + 1))
        block_norm = _norm if c.block_norms else (lambda _: nn.Identity())
        self.attn_norms = nn.ModuleList(block_norm(c) for _ in range(max(c.attn_norm_of_depth) + 1))
        self.ffn_norms = nn.ModuleList(block_norm(c) for _ in range(max(c.ffn_norm_of_depth) + 1))
        self.final_norm = _norm(c) if c.final_norm else nn.Identity()
        self.head_proj = nn.Linear(c.n_embd, c.embedding_dim, bias=c.bias) if factorized else None
        # The wiring albert_gpt decided (modeling/wiring.py), carried in the config: nothing re-decided.
        self.norm_first, self.alpha = c.norm_first, c.residual_alpha
        self.post_init()

    def _init_weights(self, module):
        # Every weight comes from model.safetensors; this only gives a fresh model a sane start.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    def _sublayer(self, x, f, norm):
        if self.norm_first:
            return x + f(norm(x))
        return norm(self.alpha * x + f(x))

    def forward(
        self, input_ids=None, attention_mask=None, position_ids=None, labels=None, use_cache=None,
        return_dict=None, cache=None, past_key_values=None, **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            from transformers.cache_utils import DynamicCache

            cache = DynamicCache()
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).unsqueeze(0)
        if int(position_ids.max()) >= self.config.block_size:
            raise ValueError(
                f"sequence of {int(position_ids.max()) + 1} tokens exceeds the model's context "
                f"({self.config.block_size}); generate at most that many tokens in all"
            )
        x = self.tok_emb(input_ids)
        if self.emb_proj is not None:
            x = self.emb_proj(x)
        x = x + self.pos_emb(position_ids)
        S = past + T
        # query i (at position past + i) may see keys 0 .. past + i, and no key that is padding
        mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -S:].bool()
        c = self.config
        for d in range(c.n_layers):
            attn, ffn = self.attns[c.attn_of_depth[d]], self.ffns[c.ffn_of_depth[d]]
            attend = lambda h, a=attn, dd=d: a(h, mask, cache, dd)  # noqa: E731
            x = self._sublayer(x, attend, self.attn_norms[c.attn_norm_of_depth[d]])
            x = self._sublayer(x, ffn, self.ffn_norms[c.ffn_norm_of_depth[d]])
        x = self.final_norm(x)
        if self.head_proj is not None:
            x = self.head_proj(x)
        logits = F.linear(x, self.tok_emb.weight)[..., : c.vocab_size]
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            shifted = logits[:, :-1].reshape(-1, logits.size(-1)).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
