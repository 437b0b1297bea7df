"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class FwError(Exception):
    """Base class for errors whose message is meant for the user."""


class PluginError(FwError):
    """A plugin is missing, broken or conflicts with another one."""


class ModelNotFoundError(FwError):
    """The model reference could not be resolved to files on disk."""


class ModelLoadError(FwError):
    """The model's files exist but cannot be read (corrupt, truncated, unsupported)."""
