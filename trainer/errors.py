"""Errors of the pretraining library. The CLI turns any `PretrainError` into a one-line message and exit 2."""


class PretrainError(Exception):
    """Bad input to a pretraining run: the user can fix it, a traceback would not help."""


class ConfigError(PretrainError):
    """A config file or option is invalid (unknown key, wrong type, inconsistent values)."""


class DataError(PretrainError):
    """The data folder is missing, its index does not match its shards, or it cannot feed the run."""


class CheckpointError(PretrainError):
    """A checkpoint cannot be resumed here (another config, another world size, unreadable)."""


class NonFiniteLossError(PretrainError):
    """The loss stayed non-finite on some rank; raised on every rank together."""
