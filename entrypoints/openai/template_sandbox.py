"""Chat templates sent by clients (``--trust-request-chat-template``), rendered in a child process.

Jinja's sandbox keeps a template away from Python's internals, but not from the CPU or the
memory: a nested loop runs for minutes, ``'x' * 10**9`` allocates a gigabyte in one C call
(no thread can interrupt that, and it holds the GIL all along), a recursive macro or a
doubling ``~`` in a loop grows without bound. Checking each operation in the environment
would miss some (filters, string methods, ``~``), so a request's template renders where all of
them are bounded at once, in a process of its own:

- a time budget (``--request-chat-template-timeout``): past it, the process is killed and a
  fresh one started;
- an output budget (``--request-chat-template-max-bytes``): a longer prompt is refused;
- a memory budget (``RLIMIT_AS``: 16 times the output budget, plus 256 MiB): past it, the
  render fails with ``MemoryError``.

Each failure is a 400 that names its budget (``param``: ``chat_template``). The process renders
with :func:`fw.entrypoints.chat_utils.render_chat_text` on a copy of the tokenizer, exactly as
the server renders its own template (parsing the template included: a template nested deeply
enough takes the parser's time and stack too); it starts with the server, in the background,
and renders one template at a time.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from fw.core.config.human import format_bytes
from fw.core.errors import InvalidRequestError
from fw.entrypoints.chat_utils import render_chat_text
from fw.entrypoints.openai.errors import APIError

logger = logging.getLogger(__name__)

#: The renderer's memory, on top of what it uses once started: this times the output budget, plus a base.
MEMORY_PER_OUTPUT_BYTE = 16
MEMORY_BASE_BYTES = 256 * 2**20
#: Seconds a fresh renderer process may take to start (import transformers, unpickle the tokenizer).
START_TIMEOUT = 60.0


class TemplateSandbox:
    """Renders request templates in a child process under the budgets above."""

    def __init__(self, tokenizer: Any, timeout: float, max_output_bytes: int) -> None:
        self.timeout = timeout
        self.max_output_bytes = max_output_bytes
        self._tokenizer_blob = pickle.dumps(tokenizer)
        self._context = multiprocessing.get_context("spawn")  # never fork a process that runs threads
        self._process: Any = None
        self._conn: Connection | None = None
        self._ready = False
        self._lock = asyncio.Lock()
        # The exchange with the child blocks; it runs here, so that the event loop never waits on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fw-template")
        self._closed = False

    def start(self) -> None:
        """Start the renderer process (it loads in the background)."""
        if self._process is not None and self._process.is_alive():
            return
        parent, child = self._context.Pipe()
        memory = MEMORY_BASE_BYTES + MEMORY_PER_OUTPUT_BYTE * self.max_output_bytes
        self._process = self._context.Process(target=_serve, name="fw-template-renderer", daemon=True,
                                              args=(child, self._tokenizer_blob, self.max_output_bytes, memory))
        self._process.start()
        child.close()
        self._conn, self._ready = parent, False

    async def render(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> str:
        """``render_chat_text(tokenizer, messages, **options)``; ``APIError`` (400) when the template
        fails or exceeds a budget."""
        if self._closed:
            raise APIError("the server is shutting down", 503, "ServiceUnavailableError")
        async with self._lock:
            self.start()
            loop = asyncio.get_running_loop()
            status, *reply = await loop.run_in_executor(self._executor, self._exchange, (messages, options))
        if status == "ok":
            return reply[0]
        if status == "invalid":
            raise APIError(reply[0], param=reply[1] or "chat_template")
        if status == "timeout":
            message = (f"the chat template did not render within its time budget of {self.timeout:g} s "
                       "(--request-chat-template-timeout)")
        elif status == "too_large":
            message = (f"the chat template rendered {format_bytes(reply[0])}, more than its output budget of "
                       f"{format_bytes(self.max_output_bytes)} (--request-chat-template-max-bytes)")
        elif status == "memory":
            message = ("the chat template ran out of its memory budget (16 times "
                       "--request-chat-template-max-bytes, plus 256 MiB)")
        else:  # "died"
            message = "the chat template could not be rendered: its renderer process stopped"
        raise APIError(message, param="chat_template")

    def _exchange(self, job: tuple[list[dict[str, Any]], dict[str, Any]]) -> tuple[Any, ...]:
        """Send one job, wait for its reply under the time budget (in the worker thread)."""
        conn = self._conn
        assert conn is not None
        try:
            if not self._ready:
                if not conn.poll(START_TIMEOUT):
                    self._restart("did not start")
                    return ("died",)
                conn.recv()  # ("ready",)
                self._ready = True
            conn.send(job)
            if not conn.poll(self.timeout):
                self._restart(f"took longer than {self.timeout:g} s")
                return ("timeout",)
            return conn.recv()
        except (EOFError, OSError):
            self._restart("stopped")
            return ("died",)

    def _restart(self, why: str) -> None:
        logger.warning("the chat-template renderer %s; starting a new one", why)
        self._kill()
        if not self._closed:
            self.start()

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
            self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._closed = True
        self._kill()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _serve(conn: Connection, tokenizer_blob: bytes, max_output_bytes: int, memory_bytes: int) -> None:
    """The renderer process: render each prompt it receives until the pipe closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server decides
    tokenizer = pickle.loads(tokenizer_blob)
    # One render first, so that whatever it imports is loaded before the memory limit counts.
    render_chat_text(tokenizer, [{"role": "user", "content": "hi"}], chat_template="{{ messages[0].content }}")
    _limit_memory(memory_bytes)
    conn.send(("ready",))
    while True:
        try:
            messages, options = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        try:
            text = render_chat_text(tokenizer, messages, **options)
            size = len(text.encode("utf-8", "surrogatepass"))
            reply: tuple[Any, ...] = ("ok", text) if size <= max_output_bytes else ("too_large", size)
        except InvalidRequestError as e:
            reply = ("invalid", str(e), e.param)
        except MemoryError:
            reply = ("memory",)
        conn.send(reply)
        messages = text = reply = None  # type: ignore[assignment]  # free them before the next job comes


def _limit_memory(memory_bytes: int) -> None:
    """Cap the address space at what the process uses now plus ``memory_bytes`` (Linux, macOS)."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            in_use = int(statm.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError, ValueError):
        return  # no /proc (macOS) or no resource module (Windows): the time budget still holds
    limit = in_use + memory_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
