"""Studying models: sweeps and their reports, benchmarks, model size and cost (info), and the
experiments that measure what normalization does (gradients at initialization, ...).
"""
