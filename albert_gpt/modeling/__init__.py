"""The model: norms, attention and feed-forward layers, the post-LN Block, cross-layer sharing,
the AlbertGPT language model and sampling. Depends only on the config.
"""
