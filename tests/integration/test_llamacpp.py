"""The exported GGUF in llama.cpp itself (llama-cpp-python, CPU): scored, checked, served.

The packaged SmolLM2 with the session's 3-step adapter is exported once (f16, q8_0); each file is scored in
llama.cpp on the run's test tokens with parity against the in-process adapter, its template and token
contract is checked (and a planted difference refused with the position shown), and a real server on
127.0.0.1 answers greedy prompts exactly as in-process llama.cpp does on the same file.
"""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install \"tunebench[serve]\"; "
                                        "scripts/setup.sh builds it)")

from tunebench.core.config import SamplingConfig, load_config  # noqa: E402

EVAL = ["eval.lm_eval_tasks=[]", "eval.bootstrap_samples=400", "model.dtype=float32", "data.max_test=6",
        "eval.probe_sampling=[{name: greedy, temperature: 0.0, min_p: null, max_new_tokens: 12}]"]
GREEDY = SamplingConfig(name="greedy", temperature=0.0, min_p=None, max_new_tokens=12)


@pytest.fixture(scope="module")
def scored(smol_adapter_run, tmp_path_factory):
    """A copy of the session run: tuned results, f16 + q8_0 exports, both scored in llama.cpp."""
    from tunebench.app.pipeline import export_and_check
    from tunebench.evals.llamacpp_eval import evaluate_gguf_llamacpp
    from tunebench.evals.runner import evaluate_model

    run = tmp_path_factory.mktemp("llamacpp") / "run"
    shutil.copytree(smol_adapter_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval", "export"))
    cfg = load_config(run / "config.yaml", EVAL)
    evaluate_model(cfg, run, "tuned", run / "adapter", run / "eval" / "tuned" / "results.json", progress=False)
    export_and_check(run, ["f16", "q8_0"], list(cfg.eval.probe_files))
    for q in ("f16", "q8_0"):
        label = f"gguf-{q}-llamacpp"
        evaluate_gguf_llamacpp(cfg, run, run / "export" / f"model-{q}.gguf", label,
                               run / "eval" / label / "results.json", progress=False)
    return run, cfg


def test_artifact_is_scored_in_llamacpp_with_parity_against_the_adapter(scored):
    from tunebench.evals.results import Results
    from tunebench.reports.compare import compare_artifacts, load_artifact_results

    run, cfg = scored
    tuned = Results.load(run / "eval" / "tuned" / "results.json")
    arts = load_artifact_results(run)
    assert set(arts) == {"f16-llamacpp", "q8_0-llamacpp"}
    q8 = arts["q8_0-llamacpp"]
    assert q8.model["runtime"] == "llama.cpp" and q8.model["chat_format"] == "chat_template.default"
    assert q8.inputs["test_tokens"] == tuned.inputs["test_tokens"]  # the adapter's own token ids
    comps = compare_artifacts(tuned, arts, cfg.report.alpha, cfg.eval.bootstrap_samples)
    measured = {}
    for q in ("f16", "q8_0"):
        c = comps[f"{q}-llamacpp"]
        ppl, kl, top1, ratio = (c.row(m) for m in ("perplexity/test", "parity/kl_mean", "parity/top1_agree",
                                                   "parity/ppl_ratio"))
        assert ppl.base == tuned.metric("perplexity/test").value and abs(ppl.rel_delta) < 0.05
        assert kl.base == 0 and 0 <= kl.tuned < 0.05 and kl.ci_low <= kl.tuned <= kl.ci_high
        assert top1.base == 1 and top1.tuned > 0.9
        # the ratio is the two perplexities' quotient, on the same tokens
        assert ratio.tuned == pytest.approx(ppl.tuned / ppl.base, rel=1e-3)
        assert c.row("parity/kl_p99").tuned >= kl.tuned
        assert any(r.metric.startswith("probes/") for r in c.rows)  # paired probe deltas
        measured[q] = (kl.tuned, top1.tuned)
    assert measured["f16"][0] <= measured["q8_0"][0]  # rounding to 8 bits moves the distribution more
    print("measured parity (kl_mean, top1):", measured)


def test_gate_rules_bound_parity(scored):
    from tunebench.evals.results import Results
    from tunebench.reports.compare import compare, compare_artifacts, load_artifact_results
    from tunebench.reports.gate import evaluate_gate

    run, cfg = scored
    tuned = Results.load(run / "eval" / "tuned" / "results.json")
    comps = compare_artifacts(tuned, load_artifact_results(run), cfg.report.alpha, cfg.eval.bootstrap_samples)
    main = compare(tuned, tuned, cfg.report.alpha, cfg.eval.bootstrap_samples)
    loose = [{"metric": "parity/kl_mean", "artifact": "q8_0-llamacpp", "max_regression": 0.05},
             {"metric": "parity/top1_agree", "artifact": "q8_0-llamacpp", "max_regression": 0.1}]
    assert evaluate_gate(main, loose, comps).passed
    strict = [{"metric": "parity/kl_mean", "artifact": "q8_0-llamacpp", "max_regression": 1e-9}]
    verdict = evaluate_gate(main, strict, comps)
    assert verdict.status == "fail" and verdict.rows[0].metric == "parity/kl_mean [q8_0-llamacpp vs adapter]"


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
    bad.write_text((run / "export" / "model-q8_0.Modelfile").read_text().replace("<|im_end|>\n{{ end }}",
                                                                                   "<|im_end|>{{ end }}", 1))
    with pytest.raises(ContractError, match="TEMPLATE"):
        check_prompts(tok, llm, gguf, prompts, bad)


def test_served_greedy_answers_equal_in_process_llamacpp(scored, tmp_path):
    from tunebench.app.serve import running_server
    from tunebench.evals.llamacpp import LlamaCppModel

    run, _ = scored
    gguf = run / "export" / "model-q8_0.gguf"
    prompts = [[{"role": "user", "content": t}] for t in ("What is 2+2?", "Name a colour.", "Say hello in French.")]
    local = LlamaCppModel.open(gguf, "chatml", n_ctx=1024).generate(prompts, GREEDY, seed=0).texts
    with open(tmp_path / "server.log", "w") as log, running_server(gguf, n_ctx=1024, log=log) as url:
        served = []
        for messages in prompts:
            body = json.dumps({"messages": messages, "temperature": 0.0, "max_tokens": GREEDY.max_new_tokens,
                               "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": 0}).encode()
            req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                served.append(json.load(r)["choices"][0]["message"]["content"].strip())
    assert served == local and all(served)
    with pytest.raises(OSError):  # stopped: nothing listens any more
        urllib.request.urlopen(url + "/v1/models", timeout=2)


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
    assert main(["eval", "--model", str(run / "export" / "model-q8_0.gguf"), "--adapter", str(run / "adapter"),
                 "--runtime", "llama.cpp", "--data-from", str(run)]) == 2


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
