"""`tunebench eval --endpoint` against what goes wrong with servers, on 127.0.0.1: nobody listening, a server that is
not OpenAI-compatible, one that dies mid-evaluation (the request is named, the results file already there is kept),
and bad flags. Each exits 2 with what to do, no traceback. The real server (llama.cpp on the exported GGUF) is in
tests/integration/test_llamacpp.py."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunebench.app.cli import main
from tunebench.evals import endpoint as ep
from tunebench.evals.served import api_root

NO_LIKELIHOOD = [
    "eval.perplexity=false",
    "eval.lm_eval_tasks=[]",
    "eval.probe_sampling=[{name: greedy, temperature: 0.0, min_p: null, max_new_tokens: 8}]",
]


class _Handler(BaseHTTPRequestHandler):
    """``/v1/models`` lists one model; chat answers ``ANSWER_FOR`` requests, then the server goes away mid-answer
    (the connection closes without a response), as a crashed engine's does. ``/html/...`` is not an API at all."""

    answered = 0
    ANSWER_FOR = 3

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/html"):
            return self._send(404, b"<html>not here</html>", "text/html")
        self._send(200, json.dumps({"object": "list", "data": [{"id": "dying", "object": "model"}]}).encode())

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        if _Handler.answered >= _Handler.ANSWER_FOR:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        _Handler.answered += 1
        body = {"choices": [{"message": {"role": "assistant", "content": "4"}}], "usage": {"completion_tokens": 1}}
        self._send(200, json.dumps(body).encode())

    def _send(self, code, data, kind="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setattr(ep, "BACKOFF_S", 0.01)
    _Handler.answered = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_api_root_gains_v1_once():
    assert api_root("http://127.0.0.1:8080") == api_root("http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/v1"


def test_a_server_that_dies_mid_evaluation_names_the_request_and_keeps_the_results_there(
    server, smol_adapter_run, tmp_path, capsys
):
    out = tmp_path / "served.json"
    out.write_text('{"kept": true}')
    code = main(
        [
            "eval",
            *NO_LIKELIHOOD,
            "--endpoint",
            server,
            "--data-from",
            str(smol_adapter_run),
            "--out",
            str(out),
            "--concurrency",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "request for prompt 4 of" in err and "closed mid-answer" in err and "after 3 attempts" in err, err
    assert out.read_text() == '{"kept": true}'


def test_a_server_that_is_not_openai_compatible_is_named(server, smol_adapter_run, capsys):
    code = main(["eval", *NO_LIKELIHOOD, "--endpoint", server + "/html/v1", "--data-from", str(smol_adapter_run)])
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 404" in err and "Traceback" not in err, err


def test_nobody_listening_says_start_the_server(smol_adapter_run, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(
        ["eval", *NO_LIKELIHOOD, "--endpoint", f"http://127.0.0.1:{port}", "--data-from", str(smol_adapter_run)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the served endpoint" in err and "start the server" in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--endpoint", "http://127.0.0.1:9/v1"], "needs --data-from"),
        (["--endpoint", "127.0.0.1:9", "--data-from", "RUN"], "http(s) URL"),
        (["--endpoint", "http://127.0.0.1:9", "--model", "x.gguf", "--data-from", "RUN"], "leave out --model"),
        (["--endpoint", "http://127.0.0.1:9", "--data-from", "RUN", "--concurrency", "0"], "--concurrency 0"),
    ],
)
def test_bad_flags_exit_2(argv, says, smol_adapter_run, capsys):
    argv = [str(smol_adapter_run) if a == "RUN" else a for a in argv]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err


def test_an_endpoint_generator_gives_on_token_each_whole_answer(server):
    """The one Generator contract: an engine that returns whole answers streams each at once through on_token."""
    from tunebench.core.config_schema import SamplingConfig
    from tunebench.evals.generation import Generator
    from tunebench.evals.served_checks import EndpointModel

    model = EndpointModel(ep.OpenAIClient(server + "/v1", role="endpoint"), "dying", None, progress=False)
    assert isinstance(model, Generator)
    pieces = []
    greedy = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=4)
    out = model.generate([[{"role": "user", "content": "2+2?"}]], greedy, 0, on_token=pieces.append)
    assert out.texts == ["4"] and pieces == ["4"]


def test_an_endpoint_refuses_token_ids_it_is_known_not_to_take():
    """Token-id prompts go to /v1/completions as the OpenAI API allows, unless the server is known not to take them:
    then the request is refused before it is sent, saying to send text."""
    from tunebench.core.config_schema import SamplingConfig
    from tunebench.core.errors import EndpointError
    from tunebench.evals.served_checks import EndpointModel

    model = EndpointModel(ep.OpenAIClient("http://127.0.0.1:9/v1", role="endpoint"), "m", None, progress=False)
    greedy = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=4)
    body = model.body([1, 2, 3], greedy, 5, stop=["\n", ""])
    assert body["prompt"] == [1, 2, 3] and body["stop"] == ["\n"] and "messages" not in body
    assert model.body("Q: 2+2?\nA:", greedy, 5)["prompt"] == "Q: 2+2?\nA:"
    assert model.body([{"role": "user", "content": "hi"}], greedy, 5)["messages"][0]["content"] == "hi"
    model.takes_ids = False
    with pytest.raises(EndpointError, match="send the prompt as text"):
        model.generate([[1, 2, 3]], greedy, 0)
