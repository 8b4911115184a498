"""`tunebench eval --endpoint URL --data-from RUN`: any OpenAI-compatible server, evaluated on the run's inputs.

What is served is what users get, so it is scored on the same inputs as the adapter and its artifacts:
- the probes go through ``/v1/chat/completions`` with the run's prompts and every sampling knob pinned
  (temperature, top_p, min_p, top_k 0, repeat penalty 1, seed per (prompt, sample), max_tokens): the seeds are the
  ones in-process llama.cpp uses (``evals.llamacpp``), so greedy answers of the served GGUF and of llama.cpp on the
  same file are identical;
- likelihood metrics only after a **capability check**: a canary conversation goes through ``/v1/completions``
  with echo and logprobs, and the prompt's log-probs the server returns are compared with the in-process adapter's
  on the same tokens. A server that drops them (llama.cpp #27174 returns the generated tokens' only) or mangles
  them gets no perplexity, and the results say why: never a score at chance. Where they hold, perplexity on the
  run's test split comes from the echoed log-probs of each conversation on the run's own token ids: sent as ids
  where the server takes them (the OpenAI API allows it), else as their text, and refused when the server's
  tokenization of that text does not line up with the ids (another tokenizer implementation: llama.cpp's makes
  one token of a blank line before a word where transformers' makes two).

The results (``RUN/eval/served/results.json``) pair with the adapter's in the report's Export section like an
exported artifact's. Nothing is cached: a re-run asks the server again (what it serves may have changed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tunebench.core import output
from tunebench.core.config_schema import EvalConfig
from tunebench.core.errors import EndpointError
from tunebench.core.runtimes import ENDPOINT, SERVED_PREFIX
from tunebench.data.encode import Encoded
from tunebench.evals.driver import CONTINUATION_LOGPROBS, GENERATE, TOKEN_LOGPROBS, Job, evaluate
from tunebench.evals.endpoint import OpenAIClient
from tunebench.evals.llamacpp import scored_positions
from tunebench.evals.perplexity import metric_from_items
from tunebench.evals.results import Results
from tunebench.evals.served_checks import (
    EndpointModel,
    likelihood_check,
    prompt_logprobs,
    text_likelihood_check,
)
from tunebench.evals.settings import EvalSettings, load_model

log = logging.getLogger(__name__)


def api_root(url: str) -> str:
    """The API root with its version path (``http://host:port`` and ``.../v1`` both give ``.../v1``)."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"--endpoint {url!r}: give the server's http(s) URL, e.g. http://127.0.0.1:8080/v1")
    return url if url.rsplit("/", 1)[-1].startswith("v1") else url + "/v1"


def served_model_name(client: OpenAIClient) -> str:
    """The first model the server lists (``GET /v1/models``); the name every request sends.

    Raises:
        EndpointError: no answer, or one without a model list (not an OpenAI-compatible server).
    """
    data = client.request("/models")
    try:
        return str(data["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise EndpointError(
            f"{client.root}/models answered without a model list (data[0].id); is it an "
            "OpenAI-compatible server? Name the model with --served-model if it lists none"
        ) from None


def endpoint_perplexity(
    model: EndpointModel, encoded: list[Encoded], tok: Any, settings: EvalSettings, split: str = "test"
) -> tuple[Any, list[dict[str, Any]], dict[str, Any]] | str:
    """``perplexity/<split>`` from the server's echoed log-probs on the run's token ids, or why it cannot be had."""
    items, t0 = [], time.perf_counter()
    for e in output.bar(encoded, desc=f"perplexity/{split}[endpoint]", disable=not model.progress):
        served = prompt_logprobs(model, list(e.input_ids), tok)
        if isinstance(served, str):
            return f"conversation {e.id}: {served}"
        pos, _ = scored_positions(e)
        missing = [t + 1 for t in pos if served[t + 1] is None]
        if missing:
            return f"conversation {e.id}: it left out the log-probs of {len(missing)} scored tokens"
        nll = -sum(float(served[t + 1]) for t in pos)
        items.append({"id": e.id, "num": nll, "den": len(pos)})
    return metric_from_items(
        items,
        encoded,
        split,
        n_boot=settings.eval.bootstrap_samples,
        alpha=settings.alpha,
        seconds=time.perf_counter() - t0,
        runtime=ENDPOINT,
    )


def endpoint_lm_eval(model: EndpointModel, ev: EvalConfig, tok: Any, label: str) -> Results:
    """The run's lm-eval tasks (``ev``: the run's eval section) through the server's /v1/completions
    (``evals.lm_eval.text``)."""
    from tunebench.evals.lm_eval.runner import TextRuntime, run_lm_eval_text

    text = TextRuntime(
        model,
        model.name,
        tok,
        model.template or "",
        complete=lambda body: model.client.request("/completions", body),
        concurrency=model.concurrency,
        describe=ENDPOINT,
    )
    return run_lm_eval_text(text, ev, label, model.identity())


def evaluate_endpoint(
    settings: EvalSettings,
    run_dir: str | Path,
    url: str,
    label: str = SERVED_PREFIX,
    out_path: str | Path | None = None,
    served_model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 8,
    timeout_s: float = 300.0,
    progress: bool = True,
) -> Results:
    """Score the model behind ``url`` on the run's inputs (``evals.driver.evaluate`` on an ``EndpointRuntime``);
    writes results.json atomically at the end.

    Raises:
        EndpointError: unreachable, not OpenAI-compatible, a refused key, or a request that failed (named).
        DataError: the run's test split no longer encodes to the data step's tokens.
    """
    runtime = EndpointRuntime.open(settings, run_dir, url, served_model, api_key_env, concurrency, timeout_s, progress)
    return evaluate(runtime, settings, run_dir, label, out_path, progress=progress)


class EndpointRuntime:
    """Any OpenAI-compatible server: a ``evals.driver.Runtime``. Likelihood metrics come only after a check against
    the run's adapter in process (loaded once, when a likelihood family first asks for it)."""

    name = ENDPOINT
    capabilities = frozenset({GENERATE, TOKEN_LOGPROBS, CONTINUATION_LOGPROBS})

    def __init__(
        self, settings: EvalSettings, run_dir: Path, model: EndpointModel, manifest: dict[str, Any], started: float
    ) -> None:
        self.settings, self.run_dir, self.model, self.manifest = settings, run_dir, model, manifest
        self.started = started
        self._reference: Any = None

    @classmethod
    def open(
        cls,
        settings: EvalSettings,
        run_dir: str | Path,
        url: str,
        served_model: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 300.0,
        progress: bool = True,
    ) -> EndpointRuntime:
        """The server at ``url``: its model (the first it lists unless named), the run's template."""
        from tunebench.models.adapters import adapter_manifest

        run_dir, started = Path(run_dir), time.perf_counter()
        manifest = adapter_manifest(run_dir / "adapter")
        model = open_endpoint(
            url, served_model, api_key_env, concurrency, timeout_s, progress, manifest, settings.model.chat_template
        )
        return cls(settings, run_dir, model, manifest, started)

    @property
    def reference(self) -> Any:
        """The run's adapter in process, on the base it was trained on: what the likelihood checks compare with."""
        if self._reference is None:
            self._reference = load_model(
                self.settings, self.run_dir / "adapter", base=self.manifest.get("model", {}), in_4bit=False
            )
        return self._reference

    def identity(self) -> dict[str, Any]:
        return self.model.identity()

    def check(self, job: Job) -> None:
        pass  # each likelihood family checks the server's log-probs first (a server without them keeps the rest)

    def generator(self, job: Job) -> EndpointModel:
        return self.model

    def score_perplexity(self, job: Job) -> None:
        """The likelihood check, then (when it holds) perplexity from the server on the run's test tokens."""
        from tunebench.evals.runner import encoded_test_split

        results, model, loaded = job.results, self.model, self.reference
        check = likelihood_check(model, loaded)
        results.artifacts["likelihood_check"] = check
        if check["ok"]:
            t = time.perf_counter()
            encoded, report = encoded_test_split(job.run_dir, loaded.tokenizer, job.settings)
            got = endpoint_perplexity(model, encoded, loaded.tokenizer, job.settings)
            if isinstance(got, str):
                check.update(ok=False, why=got)
            else:
                metric, items, inputs = got
                results.add(metric, items)
                results.inputs.update(inputs)
                results.inputs["template_sha"] = report["template"]["sha"]
                results.timings["perplexity_s"] = round(time.perf_counter() - t, 2)
        if not check["ok"]:
            log.warning("%s: no perplexity from this server: %s", model.client.root, check["why"])

    def score_lm_eval(self, job: Job) -> None:
        """The text likelihood check, then (when it holds) the run's lm-eval tasks through the server."""
        results, model, loaded, ev = job.results, self.model, self.reference, job.settings.eval
        text_check = text_likelihood_check(model, loaded, ev.lm_eval_chat_template)
        results.artifacts["lm_eval_check"] = text_check
        if text_check["ok"]:
            results.merge(endpoint_lm_eval(model, ev, loaded.tokenizer, job.label))
        else:
            results.artifacts["lm_eval_skipped"] = f"lm-eval tasks refused on this server: {text_check['why']}"
            log.warning("%s: no lm-eval tasks from this server: %s", model.client.root, text_check["why"])

    def close(self) -> None:
        self._reference = None

    def save(self, job: Job, out_path: Path) -> None:
        job.results.save(out_path)


def open_endpoint(
    url: str,
    served_model: str | None,
    api_key_env: str | None,
    concurrency: int,
    timeout_s: float,
    progress: bool,
    manifest: dict[str, Any],
    chat_template: str = "auto",
) -> EndpointModel:
    """The server at ``url`` as an ``EndpointModel``: its model (the first it lists unless named), the run's
    template."""
    client = OpenAIClient(
        api_root(url),
        api_key_env,
        timeout_s,
        retries=2,
        role="served endpoint",
        setting="--endpoint",
        error=EndpointError,
        key_setting="--api-key-env",
    )
    return EndpointModel(
        client,
        served_model or served_model_name(client),
        manifest.get("template", {}).get("name", chat_template),
        concurrency,
        progress,
    )
