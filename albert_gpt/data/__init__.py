"""Data pipeline: corpus sources, splits, tokenizers, the packed token cache and batches.

Entry point: `albert_gpt.data.pipeline.prepare_data(cfg)`.
"""
