"""albert_gpt: post-LN, parameter-shared (ALBERT-style) causal language models."""

__version__ = "0.1.0"
