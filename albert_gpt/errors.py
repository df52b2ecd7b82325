"""Exceptions for user mistakes. The CLI prints them as one line and exits with code 2."""


class AlbertGPTError(Exception):
    """Base class: a problem the user can fix (bad config, bad data, bad checkpoint)."""


class ConfigError(AlbertGPTError):
    """A config file or override is invalid."""


class DataError(AlbertGPTError):
    """A corpus, tokenizer or token cache problem."""


class CheckpointError(AlbertGPTError):
    """A checkpoint is missing, corrupted or does not match the config."""


class TrainingError(AlbertGPTError):
    """Training cannot go on (too many non-finite steps, run directory conflict)."""
