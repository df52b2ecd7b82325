"""albert_gpt: post-LN, parameter-shared (ALBERT-style) causal language models.

The Python API (`albert_gpt.api`) is re-exported here and imported on first use, so `import albert_gpt`
stays light: `from albert_gpt import load_config, train, load_run, evaluate, generate`.
"""

import importlib
import logging
from typing import Any

from albert_gpt.version import __version__

# A library logs through its own logger and leaves output to the application: a NullHandler here,
# `albert_gpt.enable_logging()` (or the command line) to see the messages.
logging.getLogger("albert_gpt").addHandler(logging.NullHandler())

_API = (
    "CSVLogger",
    "LoadedRun",
    "TrainingCallback",
    "enable_logging",
    "evaluate",
    "generate",
    "load_config",
    "load_run",
    "train",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("albert_gpt.api"), name)
    raise AttributeError(f"module 'albert_gpt' has no attribute {name!r}")
