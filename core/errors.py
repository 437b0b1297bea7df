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


class RequestFailedError(FwError):
    """A request failed inside an engine step: processing its data raised (a bug, a fault, a value
    no check caught). The engine failed that request alone, freed its blocks and kept serving the
    others. ``str()`` is the message for the user (no traceback; the engine logged that once);
    ``request_id`` names the engine request."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class EngineOverloadedError(FwError):
    """The engine refused a request because its queue is full (``--max-num-queued-reqs``,
    ``--max-num-queued-tokens``). Nothing was queued; ``retry_after`` estimates, in whole seconds
    (at least 1), when trying again may succeed: a server answers 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineDeadError(FwError):
    """The engine loop stopped (the model failed even alone, or the engine was shut down); no
    request can run any more."""
