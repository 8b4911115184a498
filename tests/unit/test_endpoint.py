"""The endpoint judge against a real OpenAI-compatible HTTP server on 127.0.0.1 (http.server in a thread):
a verdict, a 500 that recovers, a 500 that does not, a timeout, a reply without a verdict, a refused connection,
a refused key, and the cache that makes a re-run ask nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunebench.core.config_schema import JudgeEndpointConfig
from tunebench.core.errors import EXIT_INVALID_INPUT, JudgeError
from tunebench.core.net import free_port
from tunebench.evals import endpoint as ep
from tunebench.evals.judge.prompts import parse_verdict


class _Handler(BaseHTTPRequestHandler):
    """Behaviour chosen by the request's model name."""

    calls: dict[str, int] = {}
    seen_auth: list[str | None] = []

    def log_message(self, *args):  # quiet test output
        pass

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        n = _Handler.calls[model] = _Handler.calls.get(model, 0) + 1
        _Handler.seen_auth.append(self.headers.get("Authorization"))
        if model == "auth" or (model == "keyed" and self.headers.get("Authorization") != "Bearer s3cret"):
            return self._send(401, {"error": "bad key"})
        if model == "always500" or (model == "flaky" and n == 1):
            return self._send(500, {"error": "boom"})
        if model == "slow":
            time.sleep(1.0)
        text = "I cannot decide between them." if model == "noverdict" else "B is better. [[B]]"
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
            pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(ep, "BACKOFF_S", 0.01)


def _judge(url, model, tmp_path, **kw):
    cfg = JudgeEndpointConfig(base_url=url, model=model, **{"retries": 2, "timeout_s": 5.0, **kw})
    return ep.EndpointJudge(cfg, 32, progress=False, cache_dir=str(tmp_path / "cache"))


REQ = [[{"role": "user", "content": f"judge {k}"}] for k in range(5)]


def test_verdicts_in_order_and_a_rerun_asks_nothing(server, tmp_path):
    j = _judge(server, "ok", tmp_path, concurrency=3)
    texts = j.complete(REQ)
    assert [parse_verdict(t) for t in texts] == ["B"] * 5
    before = _Handler.calls["ok"]
    assert j.complete(REQ) == texts and _Handler.calls["ok"] == before


def test_a_500_is_retried(server, tmp_path):
    assert parse_verdict(_judge(server, "flaky", tmp_path).complete(REQ[:1])[0]) == "B"
    assert _Handler.calls["flaky"] == 2


def test_a_500_that_persists_stops_with_the_status(server, tmp_path):
    with pytest.raises(JudgeError, match="HTTP 500 after 3 attempts") as e:
        _judge(server, "always500", tmp_path).complete(REQ[:1])
    assert e.value.exit_code == EXIT_INVALID_INPUT


def test_a_timeout_is_retried_then_reported(server, tmp_path):
    with pytest.raises(JudgeError, match="no answer within 0.2 s after 2 attempts"):
        _judge(server, "slow", tmp_path, timeout_s=0.2, retries=1).complete(REQ[:1])


def test_a_reply_without_a_verdict_is_returned_as_text_and_parses_to_none(server, tmp_path):
    (text,) = _judge(server, "noverdict", tmp_path).complete(REQ[:1])
    assert text and parse_verdict(text) is None


def test_a_refused_connection_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeError, match="cannot reach the judge endpoint"):
        _judge(f"http://127.0.0.1:{port}/v1", "ok", tmp_path).complete(REQ[:1])


def test_the_key_comes_from_the_named_variable_and_is_never_stored(server, tmp_path, monkeypatch):
    j = _judge(server, "keyed", tmp_path, api_key_env="TB_TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match="TB_TEST_JUDGE_KEY.*not set"):
        j.complete(REQ[:1])
    monkeypatch.setenv("TB_TEST_JUDGE_KEY", "wrong")
    with pytest.raises(JudgeError, match="refused the key"):
        j.complete(REQ[:1])
    monkeypatch.setenv("TB_TEST_JUDGE_KEY", "s3cret")
    assert parse_verdict(j.complete(REQ[:1])[0]) == "B"
    stored = "".join(p.read_text() for p in (tmp_path / "cache").glob("*.json"))
    assert "s3cret" not in stored and "s3cret" not in json.dumps(j.identity())


def test_llama_cpp_server_on_the_packaged_gguf_judges(tmp_path):
    """The real OpenAI-compatible server of the deployment issue, when llama-cpp-python is installed."""
    import importlib.util
    import subprocess
    import sys
    import urllib.request

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llama_cpp.server") is None:
        pytest.skip("llama-cpp-python (with its server extra) is not installed in this environment")
    from tunebench.models.loading import packaged_file

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(packaged_file()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(120):  # the server loads the model before it listens
            try:
                urllib.request.urlopen(url + "/models", timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not start within 60 s")
        j = _judge(url, "smollm2", tmp_path, timeout_s=120.0)
        texts = j.complete([[{"role": "user", "content": "Which is better, [[A]] or [[B]]? Answer [[A]] or [[B]]."}]])
        assert isinstance(texts[0], str)  # a 135M judge may or may not give a verdict; the path is what is tested
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_llama_cpp_threads_are_the_cores_capped_by_omp_num_threads(monkeypatch):
    """llama.cpp's threads spin while they wait: where OMP_NUM_THREADS caps a process's threads (several processes on
    the cores, as under pytest-xdist), llama.cpp takes that many, never more than the cores it may use."""
    from tunebench.evals.llamacpp import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = cpu_threads()
    assert cores >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 8))
    assert cpu_threads() == cores
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert cpu_threads() == cores
