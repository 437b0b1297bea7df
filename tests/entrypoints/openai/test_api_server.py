"""The HTTP layer alone: build_app with a fake engine and serving layer (fake_app.py), served by
uvicorn in a thread.

No model is loaded, so every case the real server cannot easily produce (an internal error,
a dead engine, a handler that never finishes) is exercised exactly.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

import pytest
import requests
from fw_test_fake_app import (
    AUTH,
    KEY,
    FakeEngine,
    FakeServing,
    Served,
    assert_error,
    frontend,
    post,
    raw_request,
    serve,
)
from prometheus_client import CollectorRegistry

from fw.entrypoints.openai.api_server import bind_socket, build_app, uvicorn_config
from fw.entrypoints.openai.metrics import LoggingStatLogger


@pytest.fixture(scope="module")
def server():
    served = serve(frontend(api_key=KEY, enable_request_id_headers=True, allowed_origins=("https://chat.example",)))
    yield served
    served.stop()



def test_the_decoded_body_and_a_fresh_request_id_reach_the_serving_layer(server: Served) -> None:
    first, second = post(server, {"prompt": "hi", "n": 2}), post(server, [1, 2])
    assert first.json()["received"] == {"prompt": "hi", "n": 2}
    assert second.json()["received"] == [1, 2]  # any JSON value: refusing non-objects is serving's job
    assert first.json()["request_id"] != second.json()["request_id"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00garbage"])
def test_a_body_that_is_not_json_is_a_400(server: Served, raw: bytes) -> None:
    message = assert_error(post(server, raw), 400, "BadRequestError")
    assert "not valid JSON" in message
    assert post(server, {"ok": 1}).status_code == 200


def test_api_errors_keep_their_status_and_body(server: Served) -> None:
    response = post(server, {"do": "api_error"})
    assert_error(response, 400, "BadRequestError")
    assert response.json()["error"]["param"] == "prompt"
    assert_error(post(server, {"do": "not_found"}, "/v1/chat/completions"), 404, "NotFoundError")


def test_an_internal_error_is_a_500_logged_with_its_traceback(server: Served, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="fw"):
        message = assert_error(post(server, {"do": "crash"}), 500, "InternalServerError")
    assert "RuntimeError: a bug" in message
    record = next(r for r in caplog.records if r.name.startswith("fw.entrypoints.openai"))
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    assert post(server, {"after": "crash"}).status_code == 200


def test_fastapis_own_errors_have_openais_shape(server: Served) -> None:
    response = requests.get(server.url + "/v2/nothing", headers=AUTH, timeout=5)
    assert "GET / lists them" in assert_error(response, 404, "NotFoundError")
    # Without the key, every route but the open ones is a 401, unknown paths included.
    assert_error(requests.get(server.url + "/v2/nothing", timeout=5), 401, "AuthenticationError")
    response = requests.get(server.url + "/v1/completions", headers=AUTH, timeout=5)
    assert_error(response, 405, "MethodNotAllowedError")
    assert "POST" in response.headers["allow"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
def test_the_v1_routes_need_the_key(server: Served, headers: dict) -> None:
    for path, method in [("/v1/models", "get"), ("/v1/completions", "post"), ("/v1/chat/completions", "post")]:
        response = requests.request(method, server.url + path, headers=headers, json={}, timeout=5)
        assert_error(response, 401, "AuthenticationError")
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_key_opens_v1_and_tokenize_and_probes_stay_open(server: Served) -> None:
    assert requests.get(server.url + "/v1/models", headers=AUTH, timeout=5).json()["data"][0]["id"] == "tiny"
    lower = requests.get(server.url + "/v1/models", headers={"authorization": f"bearer {KEY}"}, timeout=5)
    assert lower.status_code == 200
    for path in ("/health", "/version", "/metrics", "/", "/openapi.json"):
        assert requests.get(server.url + path, timeout=5).status_code == 200, path
    # /tokenize and /detokenize are outside /v1 but run the tokenizer: they need the key (#9).
    for path in ("/tokenize", "/detokenize"):
        assert_error(requests.post(server.url + path, json={}, timeout=5), 401, "AuthenticationError")
        assert requests.post(server.url + path, json={}, headers=AUTH, timeout=5).status_code == 200, path


def test_request_id_header_echoes_the_clients_or_is_fresh(server: Served) -> None:
    mine = post(server, {}, headers={"X-Request-Id": "client-id-7"})
    assert mine.headers["x-request-id"] == "client-id-7"
    fresh = [post(server, {}).headers["x-request-id"] for _ in range(2)]
    assert fresh[0] != fresh[1] and len(fresh[0]) == 32
    # Errors carry it too, even a 401 that never reached a route.
    assert requests.get(server.url + "/v1/models", timeout=5).headers["x-request-id"]
    again = post(server, {}, headers={"X-Request-Id": "client-id-7"})
    assert again.json()["request_id"] != mine.json()["request_id"]  # engine ids stay unique


def test_behind_a_proxy_with_a_root_path() -> None:
    # A proxy that strips the /api prefix: routes and the key check work on the path it forwards.
    served = serve(frontend(root_path="/api", api_key=KEY))
    try:
        assert requests.get(served.url + "/v1/models", timeout=5).status_code == 401
        response = requests.post(served.url + "/v1/completions", json={"a": 1}, headers=AUTH, timeout=5)
        assert response.status_code == 200
        assert "x-request-id" not in response.headers  # not enabled here
        assert requests.get(served.url + "/health", timeout=5).status_code == 200
    finally:
        served.stop()


def test_https_with_the_given_key_and_certificate(tmp_path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    served = serve(frontend(ssl_keyfile=str(key), ssl_certfile=str(cert)))
    try:
        assert served.url.startswith("https://")
        assert requests.get(served.url + "/health", verify=str(cert), timeout=5).status_code == 200
    finally:
        served.stop()


def test_cors_preflight_and_headers(server: Served) -> None:
    preflight = requests.options(server.url + "/v1/chat/completions", timeout=5, headers={
        "Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://chat.example"
    refused = requests.options(server.url + "/v1/models", timeout=5, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert refused.status_code == 400
    denied = requests.get(server.url + "/v1/models", headers={"Origin": "https://chat.example"}, timeout=5)
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://chat.example"


def test_index_version_and_metrics(server: Served) -> None:
    from fw import __version__

    index = requests.get(server.url + "/", timeout=5).json()
    assert index["name"] == "fw" and index["version"] == __version__ and index["models"] == ["tiny"]
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models", "GET /health",
            "GET /metrics", "POST /tokenize", "POST /detokenize", "GET /version"} <= set(index["endpoints"])
    assert requests.get(server.url + "/version", timeout=5).json() == {"version": __version__}
    metrics = requests.get(server.url + "/metrics", timeout=5)
    assert metrics.headers["content-type"].startswith("text/plain")


def test_a_client_that_disconnects_cancels_its_request(server: Served) -> None:
    server.serving.cancelled.clear()
    sock = raw_request(server, {"do": "hang"})
    assert server.serving.hanging.wait(5)
    assert not server.serving.cancelled.is_set()
    sock.close()
    assert server.serving.cancelled.wait(5), "the handler was not cancelled when its client left"
    assert post(server, {}).status_code == 200


def test_a_streaming_client_that_disconnects_closes_the_stream(server: Served) -> None:
    server.serving.stream_closed.clear()
    sock = raw_request(server, {"do": "stream"})
    head = sock.recv(4096)
    assert b"200 OK" in head and b"text/event-stream" in head
    assert not server.serving.stream_closed.is_set()
    sock.close()
    assert server.serving.stream_closed.wait(5), "the event stream was not closed when its client left"


def test_health_is_503_when_the_engine_is_dead() -> None:
    engine = FakeEngine()
    served = serve(frontend(), engine=engine)
    try:
        assert requests.get(served.url + "/health", timeout=5).status_code == 200
        engine.dead_error = RuntimeError("CUDA error: out of memory")
        response = requests.get(served.url + "/health", timeout=5)
        assert "CUDA error" in assert_error(response, 503, "ServiceUnavailableError")
    finally:
        served.stop()


def test_the_lifespan_starts_and_stops_the_engine_and_logs_stats(caplog) -> None:
    stat_logger = LoggingStatLogger(interval=0.05)
    with caplog.at_level(logging.DEBUG, logger="fw.entrypoints.openai.metrics"):
        served = serve(frontend(), stat_logger)
        assert served.engine.started == 1
        deadline = time.monotonic() + 5
        while not any("Avg prompt throughput" in r.message for r in caplog.records):
            assert time.monotonic() < deadline, "no stats line was logged"
            time.sleep(0.02)
        served.stop()
    assert served.engine.stopped == 1


@pytest.mark.parametrize("level", ["error", "debug"])
def test_uvicorn_log_level_sets_the_http_servers_loggers(level):
    app = build_app(FakeEngine(), FakeServing(), frontend(uvicorn_log_level=level), ["tiny"], CollectorRegistry())
    with bind_socket("127.0.0.1", 0) as sock:
        uvicorn_config(app, frontend(uvicorn_log_level=level), sock)  # uvicorn configures logging here
    expected = getattr(logging, level.upper())
    assert logging.getLogger("uvicorn.error").level == expected
    assert logging.getLogger("uvicorn.access").level == expected
