"""Training: the loop, one optimizer step, optimizer and schedules, metrics and per-depth
diagnostics, the run directory, signals, distributed helpers, the unigram reference.
"""
