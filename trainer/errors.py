"""Errors of the pretraining library. The CLI turns any `PretrainError` or `ConfigError` (the one config
error of pipeline and trainer: `pipeline.format.schema.ConfigError`) into a one-line message and exit 2."""

from pipeline.format.schema import ConfigError

__all__ = ["USER_ERRORS", "CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "PretrainError"]


class PretrainError(Exception):
    """Bad input to a pretraining run: the user can fix it, a traceback would not help."""


class DataError(PretrainError):
    """The data folder is missing, its index does not match its shards, or it cannot feed the run."""


class CheckpointError(PretrainError):
    """A checkpoint cannot be read (not one, truncated, an unknown layout) or used here (another kind, another
    config, another world size)."""


class NonFiniteLossError(PretrainError):
    """The loss stayed non-finite on some rank; raised on every rank together."""


USER_ERRORS = (PretrainError, ConfigError)  # what the command line reports in one line with exit code 2
