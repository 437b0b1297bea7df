"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class FwError(Exception):
    """Base class for errors whose message is meant for the user."""


class PluginError(FwError):
    """A plugin is missing, broken or conflicts with another one."""


class ModelNotFoundError(FwError):
    """The model reference could not be resolved to files on disk."""


class ModelLoadError(FwError):
    """The model's files exist but cannot be read (corrupt, truncated, unsupported)."""


class InvalidRequestError(FwError, ValueError):
    """A request that cannot run as asked: a sampling parameter out of range, a prompt too long...

    A ``ValueError``, as vLLM raises for a bad request; ``param`` names the field at fault
    (``"logprobs"``, ``"n"``...), so that a server can name it in its 400, or None when no
    single field is.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
