"""Parity metrics, their comparison rows, the contract's diff, serve's input checks (no llama.cpp needed)."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest

from tunebench.app.serve import ServeError, ServeOptions, api_key, check_port, server_command
from tunebench.compare.runs import parity_rows
from tunebench.core.config import load_config
from tunebench.core.errors import ConfigError
from tunebench.core.net import is_loopback
from tunebench.data.encode import Encoded
from tunebench.evals.contract import first_difference
from tunebench.evals.parity import parity_metrics, token_parity
from tunebench.evals.results import Results


def _encoded(n: int, length: int = 6) -> list[Encoded]:
    out = []
    for k in range(n):
        ids = list(range(length))
        labels = [-100, -100] + ids[2:]
        out.append(Encoded(id=f"c{k}", input_ids=ids, labels=labels, truncated=False, n_tokens=length))
    return out


def _logprobs(rows: int, vocab: int, rng: np.random.Generator, scale: float = 3.0) -> np.ndarray:
    x = rng.normal(size=(rows, vocab)) * scale
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def test_identical_distributions_have_zero_kl_full_agreement_and_ratio_one():
    rng = np.random.default_rng(0)
    enc = _encoded(5)
    lp = [_logprobs(4, 16, rng) for _ in enc]
    metrics = {m.name: (m, its) for m, its in parity_metrics(enc, lp, [x.copy() for x in lp], n_boot=200)}
    assert metrics["parity/kl_mean"][0].value == pytest.approx(0, abs=1e-12)
    assert metrics["parity/kl_p99"][0].value == pytest.approx(0, abs=1e-12)
    assert metrics["parity/top1_agree"][0].value == 1.0
    assert metrics["parity/ppl_ratio"][0].value == pytest.approx(1.0)
    assert metrics["parity/kl_mean"][1][0] == {"id": "c0", "num": pytest.approx(0, abs=1e-12), "den": 4}


def test_kl_matches_its_definition_and_ignores_padded_vocabulary_rows():
    p = np.log(np.array([[0.5, 0.25, 0.25]]))
    q = np.log(np.array([[0.25, 0.25, 0.5, 0.0001]]))  # a fourth (padded) row the adapter does not have
    x = token_parity(p, q, [0])
    q3 = [0.25, 0.25, 0.5]  # the padded row is dropped and the rest renormalized (it sums to 1 already)
    want = sum(a * math.log(a / b) for a, b in zip([0.5, 0.25, 0.25], q3, strict=True))
    assert x["kl"][0] == pytest.approx(want) and x["agree"] == 0
    assert x["nll_q"] - x["nll_p"] == pytest.approx(math.log(0.5 / 0.25))


def test_parity_rows_pair_the_artifact_with_a_perfect_copy():
    rng = np.random.default_rng(1)
    enc = _encoded(12)
    p = [_logprobs(4, 16, rng) for _ in enc]
    q = [x + rng.normal(size=x.shape) * 0.3 for x in p]
    res = Results(label="gguf-q8_0-llamacpp", model={}, inputs={})
    for m, its in parity_metrics(enc, p, q, n_boot=400):
        res.add(m, its)
    rows = {r.metric: r for r in parity_rows(res, n_boot=400)}
    kl = rows["parity/kl_mean"]
    assert kl.base == 0 and kl.tuned > 0 and kl.delta == pytest.approx(kl.tuned)
    assert kl.ci_low > 0 and kl.verdict == "regressed"  # a real divergence is established, not "no change"
    assert rows["parity/top1_agree"].base == 1.0 and rows["parity/top1_agree"].delta <= 0
    assert rows["parity/ppl_ratio"].base == pytest.approx(1.0)
    assert rows["parity/kl_p99"].ci_high is not None


def test_first_difference_names_the_position():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_export_evaluate_takes_the_runtime():
    assert load_config("smoke", ["export.evaluate=llama.cpp"]).export.evaluate == "llama.cpp"
    assert load_config("smoke", ["export.evaluate=both"]).export.evaluate == "both"
    assert load_config("smoke").export.evaluate is True
    with pytest.raises(ConfigError, match="evaluate"):
        load_config("smoke", ["export.evaluate=vllm"])


def test_binding_beyond_loopback_needs_a_key_from_the_environment(monkeypatch, tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert api_key(ServeOptions(tmp_path)) is None
    with pytest.raises(ServeError, match="--api-key-env"):
        api_key(ServeOptions(tmp_path, host="0.0.0.0"))
    monkeypatch.delenv("TB_KEY", raising=False)
    with pytest.raises(ServeError, match="TB_KEY"):
        api_key(ServeOptions(tmp_path, host="0.0.0.0", api_key_env="TB_KEY"))
    monkeypatch.setenv("TB_KEY", "s3cret")
    assert api_key(ServeOptions(tmp_path, host="0.0.0.0", api_key_env="TB_KEY")) == "s3cret"
    cmd = server_command(tmp_path / "m.gguf", "0.0.0.0", 8080, 2048)
    assert "s3cret" not in " ".join(cmd) and cmd[cmd.index("--chat_format") + 1] == "chat_template.default"
    assert cmd[cmd.index("--interrupt_requests") + 1] == "False"  # concurrent clients queue, none is cut short


def test_a_port_in_use_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ServeError, match="cannot listen there"):
            check_port("127.0.0.1", s.getsockname()[1])


def _hub_run(tmp_path):
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 32, "base_model_name_or_path": "x"}))
    (adapter / "manifest.json").write_text(json.dumps({"model": {"ref": "unsloth/Llama-3.2-1B-Instruct"}}))
    (adapter / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return tmp_path / "run"


def test_the_vllm_command_serves_the_base_with_the_adapter_as_lora_and_the_runs_template(tmp_path, monkeypatch):
    from tunebench.app.serve import vllm_command

    run = _hub_run(tmp_path)
    monkeypatch.setenv("TB_KEY", "s3cret")
    cmd = vllm_command(ServeOptions(run, host="0.0.0.0", port=8000, api_key_env="TB_KEY", engine="vllm"))
    assert cmd[:3] == ["vllm", "serve", "unsloth/Llama-3.2-1B-Instruct"] and "--enable-lora" in cmd
    assert cmd[cmd.index("--lora-modules") + 1] == f"tuned={run / 'adapter'}"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "32"  # vLLM's default cap (16) would refuse r=32
    template = cmd[cmd.index("--chat-template") + 1]
    assert open(template).read() == "{{ messages }}"  # the run's template, not the base's
    assert "s3cret" not in " ".join(cmd)  # the key goes in the child's environment (VLLM_API_KEY)


def test_vllm_is_refused_for_a_gguf_base_and_when_not_installed(tmp_path, capsys, monkeypatch):
    from tunebench.app.cli import main

    packaged = _hub_run(tmp_path / "p")
    (packaged / "adapter" / "manifest.json").write_text(
        json.dumps({"model": {"ref": "packaged:smollm2-135m-instruct"}})
    )
    assert main(["serve", str(packaged), "--engine", "vllm"]) == 2  # the packaged base is a GGUF
    err = capsys.readouterr().err
    assert "packaged:smollm2-135m-instruct" in err and "--engine llama.cpp" in err and "Traceback" not in err, err
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm executable anywhere
    assert main(["serve", str(_hub_run(tmp_path)), "--engine", "vllm"]) == 2
    assert "pip install vllm" in capsys.readouterr().err


def test_await_models_tells_ready_from_exited_and_silent(tmp_path):
    """core.net.await_models, which `tunebench serve` and `bench serve` both wait with, against real children: an
    http.server that lists a model, a child that exits, and a child that never listens."""
    import subprocess
    import sys
    import textwrap

    from tunebench.core.net import await_models, free_port

    port = free_port()
    script = tmp_path / "models.py"
    script.write_text(
        textwrap.dedent(f"""
        import http.server, json
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({{"data": [{{"id": "m"}}]}}).encode()
                self.send_response(200 if self.path == "/v1/models" else 404)
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a):
                pass
        http.server.HTTPServer(("127.0.0.1", {port}), H).serve_forever()
    """)
    )
    server = subprocess.Popen([sys.executable, str(script)])
    try:
        assert await_models(f"http://127.0.0.1:{port}", server, timeout=30) == "ready"
    finally:
        server.kill()
        server.wait()
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    assert await_models(f"http://127.0.0.1:{free_port()}", gone, timeout=30) == "exited"
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert await_models(f"http://127.0.0.1:{free_port()}", silent, timeout=1.0) == "timeout"
    finally:
        silent.kill()
        silent.wait()
