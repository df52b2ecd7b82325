"""The configuration of an albert_gpt model exported for Hugging Face transformers (trust_remote_code).

Written by `albert-gpt export`; this file and modeling_albert_gpt.py need only torch and transformers.
"""

from transformers import PretrainedConfig


class AlbertGPTConfig(PretrainedConfig):
    """Sizes, norms and the sharing map of a post-LN (or pre-LN), parameter-shared causal LM.

    The sharing map says which unique module each layer application uses: `attn_of_depth[d]` indexes
    the model's attention modules, and likewise for the FFNs and the two norms; one block shared by all
    depths is all zeros, an unshared model 0..n-1.
    """

    model_type = "albert_gpt"

    def __init__(
        self,
        vocab_size=256,
        padded_vocab_size=256,
        n_embd=128,
        embedding_dim=128,
        n_heads=4,
        n_layers=4,
        block_size=128,
        ffn_mult=4,
        bias=True,
        norm="layernorm",
        norm_placement="post",
        norm_first=False,
        residual_alpha=1.0,
        block_norms=True,
        norm_eps=1e-5,
        norm_affine=True,
        final_norm=False,
        attn_of_depth=None,
        ffn_of_depth=None,
        attn_norm_of_depth=None,
        ffn_norm_of_depth=None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.n_embd = n_embd
        self.embedding_dim = embedding_dim
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.block_size = block_size
        self.ffn_mult = ffn_mult
        self.bias = bias
        self.norm = norm
        self.norm_placement = norm_placement
        self.norm_first = norm_first
        self.residual_alpha = residual_alpha
        self.block_norms = block_norms
        self.norm_eps = norm_eps
        self.norm_affine = norm_affine
        self.final_norm = final_norm
        zeros = [0] * n_layers
        self.attn_of_depth = list(attn_of_depth or zeros)
        self.ffn_of_depth = list(ffn_of_depth or zeros)
        self.attn_norm_of_depth = list(attn_norm_of_depth or zeros)
        self.ffn_norm_of_depth = list(ffn_norm_of_depth or zeros)
        # The names generation, caches and evaluation harnesses look for.
        self.hidden_size = n_embd
        self.num_attention_heads = n_heads
        self.num_hidden_layers = n_layers
        self.max_position_embeddings = block_size
        super().__init__(**kwargs)
