"""User-facing errors: the CLI prints them as one line (no traceback)."""


class SortingError(Exception):
    """Base class of errors a user can fix (bad input, config, missing file)."""

    exit_code = 1


class ConfigError(SortingError):
    """A configuration file or override is invalid."""

    exit_code = 2


class DataError(SortingError):
    """An input dataset, manifest or image cannot be used."""


class ModelFileError(SortingError):
    """A model file is missing, not a model, or lacks the metadata serving needs."""
