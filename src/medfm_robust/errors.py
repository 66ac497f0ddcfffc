"""Exceptions raised for bad user input; each message names the offending file or field."""


class MedFMError(Exception):
    """Base class for errors that are the user's to fix (bad file, bad setting, missing checkpoint)."""


class ConfigError(MedFMError):
    """A configuration key is unknown, has the wrong type or points at something missing."""


class DataError(MedFMError):
    """An input file is missing, corrupt or inconsistent (e.g. a mask of another size)."""


class CheckpointError(MedFMError):
    """A checkpoint is missing or does not match the model's parameters."""
