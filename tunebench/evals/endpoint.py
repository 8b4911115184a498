"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` server.

vLLM, llama.cpp's server, Ollama or a hosted API.

Stdlib only (``urllib``): bounded concurrency (``eval.judge.endpoint.concurrency``, default 8), a timeout per
request, retries with exponential backoff on 429, 5xx and timeouts, a progress bar. Greedy (temperature 0).

The key is read from the environment variable that ``api_key_env`` names, at request time, and is never written:
not into the cache, the results or any message. Answers are cached like in-process judgments (keyed by the
endpoint's identity and the messages), flushed as they arrive, so a failure loses nothing already judged.

A refused connection or a refused key stops the stage at once with what to do; a 429/5xx/timeout that outlasts
the retries stops it too, naming the status (a re-run continues from the cache).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from tunebench.core import output
from tunebench.core.config_schema import JudgeEndpointConfig
from tunebench.core.errors import JudgeError, TunebenchError
from tunebench.core.io import cache_root
from tunebench.evals.generation_cache import GenerationCache
from tunebench.evals.judge.logprobs import TOP_LOGPROBS, probs_from_chat_logprobs, verdict_text
from tunebench.evals.prompting import Messages

RETRY_STATUS = (429, 500, 502, 503, 504)
BACKOFF_S = 0.5
"""First retry waits this long; each further one twice as long (capped at BACKOFF_MAX_S)."""
BACKOFF_MAX_S = 30.0
FLUSH_EVERY = 16
LOGPROB_MAX_TOKENS = 4
"""Reply length with verdict: logprobs: enough for ``[[A]]``, whose letter's probabilities are read."""
"""Judgments written to the cache at least this often."""


class _Retry(TunebenchError):
    """A response worth retrying (429, 5xx, timeout), with the server's own words when it gave any."""

    def __init__(self, what: str, detail: str = ""):
        super().__init__(what)
        self.detail = detail


@dataclass
class OpenAIClient:
    """An OpenAI-compatible server's HTTP API: one request at a time, retried with exponential backoff on 429, 5xx
    and timeouts; every other failure raises ``error`` saying what to do. The judge and ``eval --endpoint`` share it.
    """

    base_url: str
    """Server root, e.g. http://127.0.0.1:8080/v1 (paths such as /chat/completions are appended)."""
    api_key_env: str | None = None
    timeout_s: float = 120.0
    retries: int = 4
    role: str = "judge endpoint"
    """What the server is to the user, in messages ("cannot reach the judge endpoint ...")."""
    setting: str = "eval.judge.endpoint"
    """Where the user sets the URL and key (a config section, or the command's flags)."""
    error: type[Exception] = JudgeError
    key_setting: str = ""
    """Where the key's variable is named (default ``<setting>.api_key_env``)."""

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/")

    @property
    def _key_setting(self) -> str:
        return self.key_setting or f"{self.setting}.api_key_env"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        name = self.api_key_env
        if name:
            key = os.environ.get(name)
            if not key:
                raise self.error(
                    f"{self._key_setting} names {name!r}, which is not set in the environment; "
                    f"export {name}=<your key> (the key is never written anywhere)"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def once(self, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Any:
        """One request (POST with ``body``, GET without); the decoded JSON answer.

        Raises:
            _Retry: 429, 5xx or a timeout. ``error``: anything else.
        """
        url = self.root + path
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS:
                raise _Retry(f"HTTP {e.code}", _error_detail(e)) from None
            if e.code in (401, 403):
                raise self.error(
                    f"{url} refused the key (HTTP {e.code}); check the key in "
                    f"${self.api_key_env or '<no ' + self._key_setting + ' set>'}"
                ) from None
            detail = _error_detail(e)
            raise self.error(
                f"{url} answered HTTP {e.code} ({e.reason}{': ' + detail if detail else ''}); check "
                f"{self.setting}'s URL and model name"
            ) from None
        except TimeoutError:  # socket.timeout is TimeoutError
            raise _Retry(f"no answer within {self.timeout_s:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _Retry(f"no answer within {self.timeout_s:g} s") from None
            if isinstance(e.reason, (ConnectionResetError, http.client.HTTPException)):
                raise _Retry(f"the connection was closed mid-answer ({type(e.reason).__name__})") from None
            raise self.error(
                f"cannot reach the {self.role} {url} ({e.reason}); start the server or fix "
                f"{self.setting}'s URL (docs/judge.md and docs/deploy.md)"
            ) from None
        except (ConnectionResetError, http.client.HTTPException) as e:  # the server went away mid-answer
            raise _Retry(f"the connection was closed mid-answer ({type(e).__name__})") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise self.error(
                f"{url} answered with something that is not JSON; is it an OpenAI-compatible server?"
            ) from None

    def request(self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        """One request, retried with exponential backoff on 429, 5xx and timeouts.

        Raises:
            ``error``: refused connection or key, other HTTP errors, or retries exhausted.
        """
        headers = headers if headers is not None else self.headers()
        wait = BACKOFF_S
        for attempt in range(self.retries + 1):
            try:
                return self.once(path, body, headers)
            except _Retry as e:
                if attempt == self.retries:
                    said = f" (the server said: {e.detail})" if e.detail else ""
                    raise self.error(
                        f"{self.root + path}: {e} after {self.retries + 1} attempts{said}; the server is "
                        f"overloaded or failing. Lower the concurrency or raise the timeout "
                        f"({self.setting}) and run again (answers already made are cached)"
                    ) from None
                time.sleep(wait)
                wait = min(BACKOFF_MAX_S, wait * 2)
        raise AssertionError("unreachable")

    def chat(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
        """(choices[0].message.content, the usage block) of one /chat/completions request."""
        data = self.request("/chat/completions", body, headers)
        try:
            text = str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise self.error(
                f"{self.root}/chat/completions answered without choices[0].message.content; is it an "
                "OpenAI-compatible chat completions server?"
            ) from None
        usage = data.get("usage") if isinstance(data, dict) else None
        return text, usage if isinstance(usage, dict) else {}

    def complete(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
        """(choices[0].text, the usage block) of one /completions request (a text or token-id prompt)."""
        data = self.request("/completions", body, headers)
        try:
            text = str(data["choices"][0]["text"] or "")
        except (KeyError, IndexError, TypeError):
            raise self.error(
                f"{self.root}/completions answered without choices[0].text; is it an OpenAI-compatible "
                "completions server?"
            ) from None
        usage = data.get("usage") if isinstance(data, dict) else None
        return text, usage if isinstance(usage, dict) else {}


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The server's own words about a refused request (OpenAI's ``error.message``), shortened."""
    try:
        body = json.loads(e.read().decode("utf-8", "replace"))
        msg = body.get("error", body) if isinstance(body, dict) else body
        msg = msg.get("message", msg) if isinstance(msg, dict) else msg
        return str(msg)[:300]
    except (OSError, ValueError, AttributeError):
        return ""


@dataclass
class EndpointJudge:
    """Judgments from an OpenAI-compatible chat completions server."""

    cfg: JudgeEndpointConfig
    max_new_tokens: int
    progress: bool = True
    cache_dir: str | None = None
    verdict: str = "explain"
    """explain: the verdict is parsed from the reply; logprobs: read from the reply's token probabilities."""

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "kind": "endpoint",
            "base_url": self.cfg.base_url.rstrip("/"),
            "model": self.cfg.model,
            "max_tokens": self.max_new_tokens,
            "temperature": 0,
        }
        if self.verdict == "logprobs":
            ident.update(verdict="logprobs", max_tokens=LOGPROB_MAX_TOKENS, top_logprobs=TOP_LOGPROBS)
        return ident

    @property
    def client(self) -> OpenAIClient:
        return OpenAIClient(self.cfg.base_url, self.cfg.api_key_env, self.cfg.timeout_s, self.cfg.retries)

    def ask(self, messages: Messages, headers: dict[str, str]) -> str:
        """One judgment (greedy), retried with exponential backoff on 429, 5xx and timeouts.

        Raises:
            JudgeError: refused connection or key, other HTTP errors, or retries exhausted.
        """
        body: dict[str, Any] = {"model": self.cfg.model, "messages": messages, "temperature": 0}
        if self.verdict != "logprobs":
            return self.client.chat({**body, "max_tokens": self.max_new_tokens}, headers)[0]
        body.update(max_tokens=LOGPROB_MAX_TOKENS, logprobs=True, top_logprobs=TOP_LOGPROBS)
        data = self.client.request("/chat/completions", body, headers)
        try:
            content = data["choices"][0]["logprobs"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if not content:
            raise JudgeError(
                f"{self.client.root}/chat/completions answered without choices[0].logprobs.content, so "
                "eval.judge.verdict: logprobs cannot read the verdict; use a server that returns chat logprobs "
                "(vLLM, OpenAI; llama-cpp-python's server started with --logits_all true) or set "
                "eval.judge.verdict=explain"
            )
        return verdict_text(probs_from_chat_logprobs(content))

    def complete(self, requests: list[Messages]) -> list[str]:
        """Judgments for every request, in order (cached ones are not asked again)."""
        root = self.cache_dir or (cache_root() / "judgments")
        cache = GenerationCache(root, self.identity())
        out: list[str | None] = [None] * len(requests)
        todo = []
        for i, msgs in enumerate(requests):
            hit = cache.get(msgs, 0)
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit["text"]
        if todo:
            headers = self.client.headers()
            pending: dict[str, dict[str, Any]] = {}
            lock = threading.Lock()
            bar = output.bar(total=len(todo), desc="judge[endpoint]", disable=not self.progress)
            try:
                with ThreadPoolExecutor(max_workers=self.cfg.concurrency) as pool:
                    futures = {pool.submit(self.ask, requests[i], headers): i for i in todo}
                    try:
                        for fut in as_completed(futures):
                            i = futures[fut]
                            out[i] = fut.result()
                            with lock:
                                pending[GenerationCache.key(requests[i], 0)] = {"text": out[i], "new_tokens": 0}
                                if len(pending) >= FLUSH_EVERY:
                                    cache.put_many(dict(pending))
                                    pending.clear()
                            bar.update(1)
                    except BaseException:  # stop asking; what was judged is flushed below
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
            finally:
                if pending:
                    cache.put_many(pending)
                bar.close()
        return [o or "" for o in out]
