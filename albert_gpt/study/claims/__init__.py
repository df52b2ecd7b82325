"""The claims ledger: each claim of the LayerNorm article as an experiment, a rule and a verdict."""
