"""eval.judge.verdict: logprobs on the packaged SmolLM2-135M: in-process readings (batched = alone, cached, parsed as
the explaining judge's texts are) and the same readings through llama-cpp-python's real server (chat logprobs)."""

from __future__ import annotations

import subprocess

import pytest

from tunebench.core.config_schema import JudgeEndpointConfig
from tunebench.core.errors import JudgeError
from tunebench.evals.judge import prompts as jp
from tunebench.evals.judge.logprobs import LETTERS, LogprobJudge
from tunebench.evals.judge.stage import _context

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] (scripts/setup.sh builds it)")

pytestmark = pytest.mark.slow  # the packaged model in process and served by llama.cpp: 20-30 s a test

PAIRS = [
    ("What is 2+2?", "4", ""),
    ("What is 2+2?", "", "4"),
    ("Name a colour.", "Blue. " * 3, "Seven."),
    ("What is the capital of France?", "Paris is the capital of France.", "Berlin."),
]


def requests() -> list[list[dict[str, str]]]:
    prompt = jp.verdict_only(jp.mtbench_prompts())["single"]
    return [jp.render_judge(prompt, _context(jp.PromptItem("t", [q]), 0, [a], [b])) for q, a, b in PAIRS]


@pytest.fixture(scope="module")
def server():
    """llama-cpp-python's server on the packaged GGUF with logits_all on (chat logprobs need it)."""
    from tunebench.app.serve import server_command, stop, url_of, wait_ready
    from tunebench.core.net import free_port
    from tunebench.models.loading import packaged_file

    port = free_port("127.0.0.1")
    cmd = server_command(packaged_file(), "127.0.0.1", port, 2048) + ["--logits_all", "True"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = url_of("127.0.0.1", port)
        wait_ready(url, proc, None)
        yield url
    finally:
        stop(proc)


def test_in_process_readings_batched_equal_alone_cached_and_parsed(smol_base, tmp_path):
    judge = LogprobJudge(smol_base, 3, progress=False, cache_dir=str(tmp_path))
    texts = judge.complete(requests())
    alone = [LogprobJudge(smol_base, 1, progress=False).probabilities([r])[0] for r in requests()[1:3]]
    batched = judge.probabilities(requests())
    assert max(abs(a[k] - b[k]) for a, b in zip(alone, batched[1:3], strict=True) for k in LETTERS) < 1e-4
    for text, p in zip(texts, batched, strict=True):
        mass = sum(p.values())
        assert 0.0 < mass <= 1.0 + 1e-6
        want = max(LETTERS, key=lambda k: p[k]) if mass >= 0.5 else None
        assert jp.parse_verdict(text) == want, text  # the same parser reads both verdict modes
        assert f"p(A)={p['A']:.4f}" in text
    files = sorted(tmp_path.glob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert LogprobJudge(smol_base, 3, progress=False, cache_dir=str(tmp_path)).complete(requests()) == texts
    assert [f.stat().st_mtime_ns for f in sorted(tmp_path.glob("*.json"))] == stamps  # a re-run computes nothing


def test_endpoint_reads_the_verdict_probabilities_of_the_served_model(server, smol_base, tmp_path):
    """Over chat logprobs the reading is taken where the reply opens with the verdict's brackets: it equals the
    model's own next-token probabilities after them (the same GGUF: dequantized in process, Q4_1 kernels in
    llama.cpp, so close, not equal). A reply that opens with anything else is no verdict, not a reading."""
    import torch

    from tunebench.evals.endpoint import EndpointJudge
    from tunebench.evals.prompting import render_prompt

    cfg = JudgeEndpointConfig(base_url=server + "/v1", model="judge", concurrency=2)
    judge = EndpointJudge(cfg, 512, progress=False, cache_dir=str(tmp_path), verdict="logprobs")
    assert judge.identity()["verdict"] == "logprobs" and judge.identity()["max_tokens"] < 8
    opens = [{"role": "user", "content": 'Output only "[[A]]" if 3 > 2, "[[B]]" otherwise.'}]
    texts = judge.complete(requests()[:2] + [opens])
    assert all(jp.parse_verdict(t) is None and "did not open" in t for t in texts[:2]), texts  # it answers "2 + 2"
    served = _probs(texts[2])
    assert served is not None, texts[2]
    tok = smol_base.tokenizer
    ids = render_prompt(tok, opens) + tok.encode("[", add_special_tokens=False)  # the reply opens with "["
    with torch.inference_mode():
        p = torch.softmax(smol_base.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    local = {k: float(p[tok.encode(k, add_special_tokens=False)[0]]) for k in LETTERS}
    assert max(abs(served[k] - local[k]) for k in LETTERS) < 0.05, (served, local)
    assert served["A"] > 0.2  # a real reading, not a letter's chance somewhere else


def test_an_endpoint_without_logprobs_is_refused_with_what_to_do(tmp_path):
    """A server that answers chat without ``logprobs`` (a plain text reply): the stage stops and names the fix."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tunebench.evals.endpoint import EndpointJudge

    class Plain(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": "[[A]]"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Plain)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        cfg = JudgeEndpointConfig(base_url=f"http://127.0.0.1:{httpd.server_port}/v1", model="m")
        judge = EndpointJudge(cfg, 16, progress=False, cache_dir=str(tmp_path), verdict="logprobs")
        with pytest.raises(JudgeError, match="logprobs.*eval.judge.verdict=explain"):
            judge.complete(requests()[:1])
    finally:
        httpd.shutdown()


def _probs(text: str) -> dict[str, float] | None:
    """The probabilities a judgment text shows (None for a reply that never reached the letter)."""
    import re

    found = dict(re.findall(r"p\(([ABC])\)=([0-9.]+)", text))
    return {k: float(v) for k, v in found.items()} if len(found) == 3 else None
