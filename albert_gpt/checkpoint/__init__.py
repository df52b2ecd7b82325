"""Checkpoints: the on-disk format (atomic, verified, rotated), weight files, RNG state, and
loading a run's model for inference. Below training and inference: it imports neither.
"""

from albert_gpt.checkpoint.loading import (
    check_compatible,
    load_for_inference,
    load_run_checkpoint,
    require_run_dir,
)
from albert_gpt.checkpoint.rng import capture_rng_state, restore_rng_state
from albert_gpt.checkpoint.store import (
    CONFIG_FILE,
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    TOKENIZER_FILE,
    checkpoints_folder,
    find_latest,
    list_checkpoints,
    load_checkpoint,
    read_pointer,
    reading_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from albert_gpt.checkpoint.weights import unwrap_model

__all__ = [
    "CONFIG_FILE", "META_FILE", "MODEL_FILE", "STATE_FILE", "TOKENIZER_FILE",
    "capture_rng_state", "check_compatible", "checkpoints_folder", "find_latest", "list_checkpoints",
    "load_checkpoint", "load_for_inference", "load_run_checkpoint", "read_pointer", "reading_checkpoint",
    "require_run_dir",
    "resolve_checkpoint", "restore_rng_state", "save_checkpoint", "unwrap_model", "verify_checkpoint",
]
