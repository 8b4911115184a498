"""The exported GGUF in llama.cpp itself (llama-cpp-python, CPU): scored, checked, served.

The session's smoke run, as the `--help` examples exported it (f16, q8_0; tests/integration/conftest.py): each file
is scored in llama.cpp on the run's test tokens with parity against the in-process adapter, its template and token
contract is checked (and a planted difference refused with the position shown), a real server on 127.0.0.1 answers
greedy prompts exactly as in-process llama.cpp does on the same file, `eval --endpoint` scores that server on the
run's inputs, and `bench serve` loads it.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip(
    "llama_cpp", reason='llama-cpp-python is not installed (pip install "tunebench[serve]"; scripts/setup.sh builds it)'
)

from tunebench.app.eval_settings import eval_settings  # noqa: E402
from tunebench.core.config import load_config  # noqa: E402
from tunebench.core.config_schema import SamplingConfig  # noqa: E402

pytestmark = pytest.mark.slow  # GGUFs scored and served by llama.cpp: up to 90 s a test

GREEDY = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=12)
QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
]
"""Of 8 questions asked twice in a row, llama-cpp-python's own Llama answered the last three otherwise the second time
on the packaged GGUF (2 CPU threads); the first is one it never changed."""


@pytest.fixture(scope="module")
def scored(examples, tmp_path_factory):
    """A copy of the examples' smoke run: its f16 + q8_0 exports (`tunebench export runs/smoke --gguf --quant
    f16,q8_0`), q8_0 scored in llama.cpp by an example (`eval --model ... --runtime llama.cpp`), f16 scored here."""
    from tunebench.evals.llamacpp_eval import evaluate_gguf_llamacpp

    _, cwd = examples
    run = tmp_path_factory.mktemp("llamacpp") / "run"
    shutil.copytree(cwd / "runs" / "smoke", run, ignore=shutil.ignore_patterns("checkpoints", "merged"))
    assert (run / "eval" / "gguf-q8_0-llamacpp" / "results.json").is_file()
    cfg = load_config(run / "config.yaml")
    evaluate_gguf_llamacpp(
        eval_settings(cfg),
        run,
        run / "export" / "model-f16.gguf",
        "gguf-f16-llamacpp",
        run / "eval" / "gguf-f16-llamacpp" / "results.json",
        progress=False,
    )
    return run, cfg


def test_artifact_is_scored_in_llamacpp_with_parity_against_the_adapter(scored):
    from tunebench.compare.runs import compare_artifacts, load_artifact_results
    from tunebench.evals.results import Results

    run, cfg = scored
    tuned = Results.load(run / "eval" / "tuned" / "results.json")
    arts = load_artifact_results(run)
    assert {"f16-llamacpp", "q8_0-llamacpp"} <= set(arts)
    q8 = arts["q8_0-llamacpp"]
    assert q8.model["runtime"] == "llama.cpp" and q8.model["chat_format"] == "chat_template.default"
    assert q8.inputs["test_tokens"] == tuned.inputs["test_tokens"]  # the adapter's own token ids
    for name in ("f16-llamacpp", "q8_0-llamacpp"):  # parity read the tuned evaluation's pass, ran no adapter again
        assert arts[name].artifacts["parity_adapter_side"].startswith("the tuned evaluation's pass"), name
    comps = compare_artifacts(tuned, arts, cfg.report.alpha, cfg.eval.bootstrap_samples)
    measured = {}
    for q in ("f16", "q8_0"):
        c = comps[f"{q}-llamacpp"]
        ppl, kl, top1, ratio = (
            c.row(m) for m in ("perplexity/test", "parity/kl_mean", "parity/top1_agree", "parity/ppl_ratio")
        )
        assert ppl.base == tuned.metric("perplexity/test").value and abs(ppl.rel_delta) < 0.05
        assert kl.base == 0 and 0 <= kl.tuned < 0.05 and kl.ci_low <= kl.tuned <= kl.ci_high
        assert top1.base == 1 and top1.tuned > 0.9
        # the ratio is the two perplexities' quotient, on the same tokens
        assert ratio.tuned == pytest.approx(ppl.tuned / ppl.base, rel=1e-3)
        assert c.row("parity/kl_p99").tuned >= kl.tuned
        assert any(r.metric.startswith("probes/") for r in c.rows)  # paired probe deltas
        # lm-eval's tasks in llama.cpp (create_completion, continuation by text offset), paired document by document
        lm = [r for r in c.rows if r.metric.startswith("lm_eval/")]
        assert {r.metric for r in lm} == {m.name for m in tuned.metrics if m.name.startswith("lm_eval/")}, lm
        assert all(r.n == tuned.metric(r.metric).n for r in lm)
        measured[q] = (kl.tuned, top1.tuned)
    assert measured["f16"][0] <= measured["q8_0"][0]  # rounding to 8 bits moves the distribution more
    print("measured parity (kl_mean, top1):", measured)


def test_gate_rules_bound_parity(scored):
    from tunebench.compare.comparison import compare
    from tunebench.compare.runs import compare_artifacts, load_artifact_results
    from tunebench.core.errors import GateError
    from tunebench.evals.results import Results
    from tunebench.gate.rules import load_rules
    from tunebench.gate.verdict import evaluate_gate

    run, cfg = scored
    tuned = Results.load(run / "eval" / "tuned" / "results.json")
    comps = compare_artifacts(tuned, load_artifact_results(run), cfg.report.alpha, cfg.eval.bootstrap_samples)
    main = compare(tuned, tuned, cfg.report.alpha, cfg.eval.bootstrap_samples)
    loose = [
        {"metric": "parity/kl_mean", "artifact": "q8_0-llamacpp", "max_regression": 0.05},
        {"metric": "parity/top1_agree", "artifact": "q8_0-llamacpp", "max_regression": 0.1},
    ]
    assert evaluate_gate(main, loose, comps).passed
    strict = [{"metric": "parity/kl_mean", "artifact": "q8_0-llamacpp", "max_regression": 1e-9}]
    verdict = evaluate_gate(main, strict, comps)
    assert verdict.status == "fail" and verdict.rows[0].metric == "parity/kl_mean [q8_0-llamacpp vs adapter]"
    # the shipped export gate: its parity rules decide on this q8_0 (their margins come from these measurements)
    shipped = [r for r in load_rules("export") if r.artifact]
    assert {r.metric for r in shipped} == {"parity/kl_mean", "parity/top1_agree", "perplexity/test"}
    verdict = evaluate_gate(main, shipped, comps)
    assert verdict.passed and [r.status for r in verdict.rows] == ["pass"] * 3, verdict.rows
    without = {k: v for k, v in comps.items() if k != "q8_0-llamacpp"}
    with pytest.raises(GateError, match=r"model-q8_0\.gguf --runtime llama\.cpp --data-from RUN"):
        evaluate_gate(main, shipped, without)


def test_contract_holds_and_a_planted_difference_is_refused(scored):
    from transformers import AutoTokenizer

    from tunebench.evals.contract import ContractError, check_prompts, contract_prompts
    from tunebench.evals.llamacpp import open_gguf

    run, cfg = scored
    contract = json.loads((run / "export" / "contract-q8_0.json").read_text())
    assert contract["runtimes"] == ["transformers", "llama.cpp", "ollama"] and contract["prompts"] >= 10
    assert contract["eos"]["transformers"] == contract["eos"]["llama.cpp"]
    gguf = run / "export" / "model-q8_0.gguf"
    llm = open_gguf(gguf, n_ctx=512)
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    prompts = contract_prompts(list(cfg.eval.probe_files))
    tok.chat_template = tok.chat_template.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n\n")
    with pytest.raises(ContractError, match=r"other tokens in llama.cpp than in transformers.*first at position \d+"):
        check_prompts(tok, llm, gguf, prompts)
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    bad = run / "export" / "bad.Modelfile"
    bad.write_text(
        (run / "export" / "model-q8_0.Modelfile").read_text().replace("<|im_end|>\n{{ end }}", "<|im_end|>{{ end }}", 1)
    )
    with pytest.raises(ContractError, match="TEMPLATE"):
        check_prompts(tok, llm, gguf, prompts, bad)


def test_served_greedy_answers_equal_in_process_llamacpp(scored, tmp_path):
    from tunebench.app.serve import running_server
    from tunebench.evals.llamacpp import LlamaCppModel
    from tunebench.evals.served import open_endpoint

    run, _ = scored
    gguf = run / "export" / "model-q8_0.gguf"
    prompts = [[{"role": "user", "content": t}] for t in ("What is 2+2?", "Name a colour.", "Say hello in French.")]
    model = LlamaCppModel.open(gguf, "chatml", n_ctx=1024)
    local = model.generate(prompts, GREEDY, seed=0).texts
    with open(tmp_path / "server.log", "w") as log, running_server(gguf, n_ctx=1024, log=log) as url:
        served = []
        for messages in prompts:
            body = json.dumps(
                {
                    "messages": messages,
                    "temperature": 0.0,
                    "max_tokens": GREEDY.max_new_tokens,
                    "top_k": 0,
                    "top_p": 1.0,
                    "min_p": 0.0,
                    "repeat_penalty": 1.0,
                    "seed": 0,
                }
            ).encode()
            req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                served.append(json.load(r)["choices"][0]["message"]["content"].strip())
        # the Generator contract's completions: a text to continue, with stop strings, in process and over HTTP
        endpoint = open_endpoint(url, None, None, 2, 120.0, False, {}, load_config("smoke").model.chat_template)
        text, stop = ["Question: What is 2+2?\nAnswer:", "1, 1, 2, 3, 5, 8,"], ["\n", "Question:"]
        served_text = endpoint.generate(text, GREEDY, seed=0, stop=stop).texts
        served_chat = endpoint.generate(prompts, GREEDY, seed=0).texts
    assert served == local and all(served) and served_chat == local
    local_text = model.generate(text, GREEDY, seed=0, stop=stop).texts
    assert served_text == local_text and all(local_text), local_text
    assert not any("\n" in a or "Question:" in a for a in local_text)  # cut before the first stop string
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(url + "/v1/models", timeout=2)


@pytest.fixture(scope="module")
def packaged_server(tmp_path_factory):
    """`tunebench serve`'s server process (app.serve_app) on the packaged GGUF (SmolLM2-135M-Instruct Q4_1) on
    127.0.0.1, its log in a file: (url, log path)."""
    from tunebench.app.serve import running_server
    from tunebench.models.loading import packaged_file

    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log_path, "w") as log, running_server(packaged_file(), n_ctx=1024, log=log) as url:
        yield url, log_path


def _post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_served_greedy_answers_do_not_depend_on_earlier_requests(packaged_server):
    """The same request at temperature 0 gets the same answer every time, also after other requests (the server
    used to reuse the previous request's cached prefix and evaluate only the rest, in another batch shape: one
    question was answered "In", then "This", then "In"); and it is in-process llama.cpp's answer on the same file."""
    from tunebench.evals.llamacpp import LlamaCppModel
    from tunebench.models.loading import packaged_file

    url, _ = packaged_server

    def ask(question: str, **knobs) -> str:
        body = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 24, **knobs}
        status, answer = _post(url, body)
        assert status == 200, answer
        return answer["choices"][0]["message"]["content"]

    question = "How many legs does a spider have?"  # llama_cpp.server answered ": 8", then "indeed", then ": 8"...
    answers = [ask(question) for _ in range(3)]
    ask("Name a colour.")
    ask("Write one sentence about the sea.")
    answers += [ask(question) for _ in range(2)]
    assert len(set(answers)) == 1 and answers[0], answers
    pinned = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": 0, "max_tokens": 12}
    local = LlamaCppModel.open(packaged_file(), "chatml", n_ctx=1024)
    prompts = [[{"role": "user", "content": q}] for q in ("Name a colour.", question)]
    assert [ask(p[0]["content"], **pinned).strip() for p in prompts] == local.generate(prompts, GREEDY, seed=0).texts


def test_llamacpp_scores_a_prompt_the_same_whatever_was_evaluated_before():
    """The cause, where it is fixed: llama.cpp's logits depend on the batch a token is evaluated in, and
    llama-cpp-python's Llama evaluated only what a prompt did not share with the previous one (a repeated prompt: its
    last token alone), so the first token's log-probability moved by up to 0.2 nats and greedy answers changed
    (measured on this file: 3 of 8 questions asked twice). open_gguf's Llama evaluates every prompt whole."""
    from tunebench.evals.llamacpp import chat_formatter, chat_prompt_ids, open_gguf
    from tunebench.models.loading import packaged_file

    llm = open_gguf(packaged_file(), n_ctx=1024, logits_all=True)
    ids = [chat_prompt_ids(llm, chat_formatter(llm), [{"role": "user", "content": q}]) for q in QUESTIONS]
    knobs = {"max_tokens": 24, "temperature": 0, "logprobs": 1, "top_k": 0, "top_p": 1.0, "min_p": 0.0}

    def first(prompt: list[int]) -> tuple[str, float]:
        choice = llm.create_completion(prompt, repeat_penalty=1.0, **knobs)["choices"][0]
        return choice["text"], choice["logprobs"]["token_logprobs"][0]

    for i, prompt in enumerate(ids):
        fresh, again = first(prompt), first(prompt)  # again: the whole prompt is the previous one's prefix
        first(ids[(i + 1) % len(ids)])
        assert fresh == again == first(prompt), QUESTIONS[i]  # the same text and bit for bit the same log-prob


def test_a_malformed_body_gets_400_with_an_openai_error_and_one_log_line(packaged_server):
    url, log_path = packaged_server
    before = log_path.read_text().splitlines()
    refused = {
        b'{"messages": [{"role": "user", "content": "hi"}': ("invalid_json", "the request body is not valid JSON"),
        b"[1, 2]": ("invalid_json", "must be a JSON object, not list"),
        b'{"messages": "hi"}': ("invalid_request", "messages: Input should be a valid list"),
    }
    for body, (code, message) in refused.items():
        status, answer = _post(url, body)
        assert status == 400, answer
        assert set(answer) == {"error"} and {"message", "type", "code"} <= set(answer["error"])
        assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["code"] == code
        assert message in answer["error"]["message"], answer
    status, _ = _post(url, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert status == 200  # the server serves on
    time.sleep(0.5)  # the last line is written once the response is sent
    lines = log_path.read_text().splitlines()[len(before) :]
    assert len(lines) == 4, lines  # one line per request, nothing else (no traceback, no llama.cpp log)
    line = re.compile(r"^\d\d:\d\d:\d\d 127\.0\.0\.1 POST /v1/chat/completions (\d{3}) \d+\.\d\d s(: .+)?$")
    statuses = [line.match(text).group(1) if line.match(text) else text for text in lines]
    assert statuses == ["400", "400", "400", "200"], lines
    assert "not valid JSON" in lines[0] and "messages: Input should be a valid list" in lines[2]
    everything = log_path.read_text()
    assert "Traceback" not in everything and "llama_model_loader" not in everything


def test_serve_refuses_bad_input_with_exit_code_2(scored, tmp_path, capsys, monkeypatch):
    from tunebench.app.cli import main

    run, _ = scored
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("export", "eval"))
    assert main(["serve", str(bare), "--no-export"]) == 2
    assert "--no-export" in capsys.readouterr().err
    assert main(["serve", str(run), "--host", "0.0.0.0"]) == 2
    assert "--api-key-env" in capsys.readouterr().err
    monkeypatch.delenv("TB_TEST_KEY", raising=False)
    assert main(["serve", str(run), "--host", "0.0.0.0", "--api-key-env", "TB_TEST_KEY"]) == 2
    assert "TB_TEST_KEY" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", str(run), "--port", str(s.getsockname()[1])]) == 2
        assert "cannot listen there" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                str(run / "export" / "model-q8_0.gguf"),
                "--adapter",
                str(run / "adapter"),
                "--runtime",
                "llama.cpp",
                "--data-from",
                str(run),
            ]
        )
        == 2
    )


def test_a_gguf_without_chat_template_is_refused(tmp_path):
    import gguf

    from tunebench.app.serve import ServeError, check_template

    path = tmp_path / "plain.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("no template")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ServeError, match="no tokenizer.chat_template"):
        check_template(path)


def test_eval_endpoint_of_the_served_gguf_equals_in_process_llamacpp(scored, tmp_path, capsys):
    """`tunebench eval --endpoint` on `tunebench serve`'s server: greedy answers are in-process llama.cpp's on the same
    file, one for one; the log-prob check lines the echo up (llama-cpp-python leaves `<|im_start|>`, SmolLM2's BOS id,
    out of it) and agrees with the adapter; the test conversations, sent as text since this server takes no token
    ids, re-tokenize otherwise than the run's ids, so perplexity is refused and said, never scored on other tokens.
    The served results pair with the adapter like an artifact."""
    from tunebench.app.cli import main
    from tunebench.app.serve import running_server
    from tunebench.compare.runs import compare_artifacts, identical_answers, load_artifact_results
    from tunebench.evals.generation import Generator
    from tunebench.evals.results import Results
    from tunebench.evals.served_checks import EndpointModel

    run, cfg = scored
    gguf = run / "export" / "model-q8_0.gguf"
    with open(tmp_path / "server.log", "w") as log, running_server(gguf, n_ctx=2048, log=log) as url:
        assert main(["eval", "--endpoint", url, "--data-from", str(run), "--concurrency", "2"]) == 0
    out = capsys.readouterr().out
    served = Results.load(run / "eval" / "served" / "results.json")
    local = Results.load(run / "eval" / "gguf-q8_0-llamacpp" / "results.json")
    equal, total = identical_answers(local, served)["greedy"]
    assert equal == total == 34, (equal, total)
    assert "served against q8_0-llamacpp" in out and f"greedy: {total} of {total} answers identical" in out, out
    check = served.artifacts["likelihood_check"]
    assert check["left_out"] == 3  # the canary's three <|im_start|>
    assert check["mean_abs_diff"] < 0.25, check  # q8_0 in llama.cpp against the f32 adapter, token by token
    ppl = [m for m in served.metrics if m.name.startswith("perplexity/")]
    if check["ok"]:  # every test conversation's text re-tokenized to the run's ids: llama.cpp's perplexity, via HTTP
        assert ppl[0].value == pytest.approx(local.metric("perplexity/test").value, rel=1e-3)
        assert served.inputs["test_tokens"] == local.inputs["test_tokens"]
    else:  # one did not (llama.cpp makes one token of a blank line before a word, transformers two): refused, said
        assert "does not line up" in check["why"] and "takes no token-id prompts" in check["why"], check
        assert not ppl and "no perplexity:" in out
    # lm-eval's tasks through the server's /v1/completions: the text check holds (each side scores the canary's reply
    # with its own tokenizer), and every value and document equals in-process llama.cpp's on the same file
    assert served.artifacts["lm_eval_check"]["ok"], served.artifacts["lm_eval_check"]
    lm_served = {m.name: m for m in served.metrics if m.name.startswith("lm_eval/")}
    lm_local = {m.name: m for m in local.metrics if m.name.startswith("lm_eval/")}
    assert lm_served and lm_served.keys() == lm_local.keys()
    for name, m in lm_served.items():
        assert m.value == lm_local[name].value, name
        assert served.items[m.items] == local.items[lm_local[name].items], name
    assert served.artifacts["lm_eval_text"]["requests"] > 0
    tuned = Results.load(run / "eval" / "tuned" / "results.json")
    arts = load_artifact_results(run)
    comp = compare_artifacts(tuned, {"served": arts["served"]}, cfg.report.alpha, cfg.eval.bootstrap_samples)["served"]
    assert any(r.metric.startswith("probes/") for r in comp.rows)
    # the report's Export section: a served column against the adapter, and served against in-process llama.cpp
    report = (run / "report.md").read_text()
    assert "| served" in report.split("## Export", 1)[1], report
    served_line = next(line for line in report.splitlines() if line.startswith("Served = evaluated:"))
    assert served_line.startswith(
        "Served = evaluated: **served** against **q8_0-llamacpp** (in-process llama.cpp "
        "on the same file `model-q8_0.gguf`): "
    ), served_line
    assert f"greedy: {total} of {total} answers identical" in served_line, served_line
    assert "Δ served − in-process" in report
    assert isinstance(EndpointModel(None, "", None), Generator)  # one decode-path interface


def test_a_server_without_prompt_logprobs_gets_no_likelihood_metrics(scored, tmp_path, capsys):
    """llama-cpp-python's server with logits_all off refuses echo + logprobs: perplexity is refused, said, not 0."""
    import subprocess
    import sys

    from tunebench.app.cli import main
    from tunebench.app.serve import wait_ready
    from tunebench.core.net import free_port
    from tunebench.evals.results import Results

    run, _ = scored
    port = free_port("127.0.0.1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(run / "export" / "model-q8_0.gguf"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--logits_all",
            "False",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, None)
        out = tmp_path / "served.json"
        assert (
            main(
                [
                    "eval",
                    "eval.probe_sampling=[]",
                    "--endpoint",
                    url + "/v1",
                    "--data-from",
                    str(run),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    served = Results.load(out)
    check = served.artifacts["likelihood_check"]
    assert not check["ok"] and "refused echo with logprobs" in check["why"], check
    assert not [m for m in served.metrics if m.name.startswith("perplexity/")]
    assert not [m for m in served.metrics if m.name.startswith("lm_eval/")]  # never scored at chance
    assert "cannot score a continuation" in served.artifacts["lm_eval_skipped"]
    out = capsys.readouterr().out
    assert "no perplexity:" in out and "no lm-eval tasks:" in out


def test_bench_serve_loads_tunebench_serve_and_checks_every_answer(scored, tmp_path):
    """`tunebench bench serve --run RUN`: 3 streaming clients, every 4th request dropped mid-stream; no request is
    lost or answered twice, the server answers after the drops, and the figures come with their spread."""
    from tunebench.bench.cli import main as bench_main

    run, _ = scored
    out = tmp_path / "bench"
    code = bench_main(
        [
            "serve",
            "--run",
            str(run),
            "--clients",
            "3",
            "--requests",
            "8",
            "--max-tokens",
            "8",
            "--disconnect-every",
            "4",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    result = json.loads((out / "serve.json").read_text())
    assert code == 0 and result["passed"], result["checks"]
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        assert row["dropped_on_purpose"] == 2 and row["answered"] == 6 and row["server_survived"]
        assert row["ttft_p50_s"] <= row["latency_p50_s"] and row["tokens_per_s"] > 0
    assert result["summary"]["latency_p95_s"]["ci"] is not None  # two repeats: an interval
    md = (out / "serve.md").read_text()
    assert "time to first token, p50" in md and "no request lost" in md and "127.0.0.1" in md


def test_bench_serve_refuses_a_host_that_is_not_loopback(capsys):
    from tunebench.bench.cli import main as bench_main

    assert bench_main(["serve", "--url", "http://10.1.2.3:8080", "--repeats", "1"]) == 2
    assert "loopback" in capsys.readouterr().err
