"""The ``huggingface`` model source against a fake HF cache tree and a local stand-in for the Hub.

Nothing here touches the internet: downloads go to an http.server thread on 127.0.0.1
(``HF_ENDPOINT``) that answers the few API calls huggingface_hub makes.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

import pytest

from fw.core.errors import ModelNotFoundError
from fw.plugins.loaders.hf_source import HuggingFaceSource, download_patterns, hf_cache_dir

MAIN_COMMIT = "a" * 40
BRANCH_COMMIT = "b" * 40
HF_ENV = [
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HF_ENDPOINT",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_ETAG_TIMEOUT", "HF_TOKEN",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub variable from the machine leaks in; ~ is an empty temp dir."""
    for name in HF_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # huggingface_hub froze HF_HUB_OFFLINE at import; a CI machine that sets it must
    # not turn the stub-server tests into offline tests.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def build_hf_cache(cache_dir: Path, repo_folder: str = "models--org--name") -> Path:
    """A cache tree as huggingface_hub writes it: refs -> snapshots -> symlinks into blobs."""
    storage = cache_dir / repo_folder
    for ref, commit in (("main", MAIN_COMMIT), ("my-branch", BRANCH_COMMIT)):
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no trailing newline, like the real thing
        content = json.dumps({"model_type": "llama", "revision": ref}).encode()
        blob = storage / "blobs" / hashlib.sha1(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        snapshot = storage / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").symlink_to(Path("..", "..", "blobs", blob.name))
    return storage


def revision_of(path: Path) -> str:
    return json.loads((path / "config.json").read_text())["revision"]


def resolve(model: str = "org/name", *, revision: str | None = None, download_dir: str | None = None):
    source = HuggingFaceSource()
    assert source.matches(model)
    return source.resolve(model, revision=revision, download_dir=download_dir)


# -- the local cache ------------------------------------------------------------------


def test_cache_from_hf_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_hf_cache(tmp_path / "hub-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    resolved = resolve()
    assert resolved.path == tmp_path / "hub-cache" / "models--org--name" / "snapshots" / MAIN_COMMIT
    assert revision_of(resolved.path) == "main"
    assert resolved.served_name == "org/name"
    assert resolved.source == "huggingface"


def test_cache_from_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_hf_cache(tmp_path / "hf-home" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert resolve().path == tmp_path / "hf-home" / "hub" / "models--org--name" / "snapshots" / MAIN_COMMIT


def test_hf_hub_cache_wins_over_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_hf_cache(tmp_path / "hub-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    assert resolve().path.is_relative_to(tmp_path / "hub-cache")


def test_default_cache_under_home(tmp_path: Path) -> None:
    build_hf_cache(tmp_path / "home" / ".cache" / "huggingface" / "hub")
    assert revision_of(resolve().path) == "main"


def test_download_dir_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_hf_cache(tmp_path / "downloads")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    resolved = resolve(download_dir=str(tmp_path / "downloads"))
    assert resolved.path == tmp_path / "downloads" / "models--org--name" / "snapshots" / MAIN_COMMIT
    assert hf_cache_dir(str(tmp_path / "downloads")) == tmp_path / "downloads"


@pytest.mark.parametrize(
    ("revision", "commit", "expected"),
    [
        ("my-branch", BRANCH_COMMIT, "my-branch"),  # a branch, through refs/
        (BRANCH_COMMIT, BRANCH_COMMIT, "my-branch"),  # a commit hash, straight to snapshots/
        (MAIN_COMMIT, MAIN_COMMIT, "main"),
    ],
)
def test_revision_as_branch_or_commit(
    revision: str, commit: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_hf_cache(tmp_path / "hub-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    resolved = resolve(revision=revision)
    assert resolved.path.name == commit
    assert revision_of(resolved.path) == expected


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_uncached_and_offline(variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_hf_cache(tmp_path / "hub-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv(variable, "1")
    # The cache still works offline...
    assert revision_of(resolve().path) == "main"
    # ...but another repo, or a revision the cache lacks, cannot be fetched.
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve("org/other")
    message = str(excinfo.value)
    assert f"not in the Hugging Face cache at {tmp_path / 'hub-cache'}" in message
    assert "downloads are off" in message
    with pytest.raises(ModelNotFoundError, match="revision v9"):
        resolve(revision="v9")


def test_repo_ids_match_paths_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = HuggingFaceSource()
    assert source.matches("org/name") and source.matches("gpt2")
    (tmp_path / "org" / "existing").mkdir(parents=True)
    for model in (None, "org/existing", "./org/name", "/abs/org", "x.gguf", "a/b/c", "bad--name", "spaces in/name", "example://x"):
        assert not source.matches(model), model


def test_download_patterns_take_one_weight_format() -> None:
    both = ["config.json", "model.safetensors", "pytorch_model.bin", "README.md"]
    assert "*.safetensors" in download_patterns(both) and "*.bin" not in download_patterns(both)
    assert "*.bin" in download_patterns(["config.json", "pytorch_model.bin"])


# -- a local stand-in for the Hub -----------------------------------------------------


class HubStub(ThreadingHTTPServer):
    """Answers like huggingface.co for one repo, ``org/name``, with ``files`` at ``commit``.

    With ``error_code`` set, every request gets ``error_status`` and that ``X-Error-Code``
    (what the Hub sends for a missing repo, a gated repo, a missing revision).
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files: dict[str, bytes] = {}
        self.commit = MAIN_COMMIT
        self.error_code: str | None = None
        self.error_status = 404
        self.requests: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _HubHandler(BaseHTTPRequestHandler):
    server: HubStub

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        stub = self.server
        stub.requests.append(f"{self.command} {self.path}")
        path = unquote(urlsplit(self.path).path)
        if stub.error_code is not None:
            return self._send(stub.error_status, b"{}", {"X-Error-Code": stub.error_code})
        if path == "/api/models/org/name" or path.startswith("/api/models/org/name/revision/"):
            info = {"id": "org/name", "sha": stub.commit, "siblings": [{"rfilename": f} for f in stub.files]}
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        if path.startswith("/api/models/org/name/tree/"):
            tree = [
                {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
                for name, body in stub.files.items()
            ]
            return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
        if path.startswith("/org/name/resolve/"):
            name = path.split("/", 5)[5]
            if name in stub.files:
                body = stub.files[name]
                etag = f'"{hashlib.sha1(body).hexdigest()}"'
                return self._send(200, body, {"X-Repo-Commit": stub.commit, "ETag": etag})
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
        self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    stub = HubStub()
    thread = threading.Thread(target=stub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", stub.endpoint)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    yield stub
    stub.shutdown()
    stub.server_close()


@pytest.mark.parametrize(
    ("error_code", "revision", "expected"),
    [
        ("RepoNotFound", None, "org/name was not found on the Hugging Face Hub (or it is gated/private: set HF_TOKEN)"),
        ("GatedRepo", None, "org/name is a gated repository on the Hugging Face Hub"),
        ("RevisionNotFound", "v9", "revision 'v9' of org/name was not found on the Hugging Face Hub"),
    ],
)
def test_hub_errors_become_clear_messages(
    hub: HubStub, error_code: str, revision: str | None, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    hub.error_code = error_code
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve(revision=revision)
    assert expected in str(excinfo.value)
    assert "\n" not in str(excinfo.value)
    assert hub.requests, "the stub Hub was never asked"


def test_hub_server_error(hub: HubStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    hub.error_code, hub.error_status = "Internal", 500
    with pytest.raises(ModelNotFoundError, match=r"answered HTTP 500 for org/name and it is not in the local cache"):
        resolve()


def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve()
    assert time.monotonic() - start < 5
    message = str(excinfo.value)
    assert message.startswith("could not reach the Hugging Face Hub (offline?)")
    assert f"not in the local cache at {tmp_path / 'hub-cache'}" in message
    assert "\n" not in message


def test_download_fetches_only_what_the_model_needs(
    hub: HubStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.files = {
        "config.json": b'{"model_type": "llama", "revision": "main"}',
        "tokenizer.json": b"{}",
        "chat_template.jinja": b"{{ messages }}",
        "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
        "pytorch_model.bin": b"a second copy of the weights",
        "README.md": b"# docs",
        "images/diagram.png": b"\x89PNG",
    }
    resolved = resolve(download_dir=str(tmp_path / "downloads"))
    assert resolved.path == tmp_path / "downloads" / "models--org--name" / "snapshots" / MAIN_COMMIT
    assert resolved.served_name == "org/name"
    assert sorted(p.name for p in resolved.path.iterdir()) == [
        "chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json",
    ]  # fmt: skip
    assert (resolved.path / "model.safetensors").read_bytes() == hub.files["model.safetensors"]

    # The download landed in the cache layout, so the next start needs no Hub at all.
    hub.error_code = "RepoNotFound"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(download_dir=str(tmp_path / "downloads")).path == resolved.path
