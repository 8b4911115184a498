"""A judge behind any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, llama.cpp's server, Ollama, a hosted API).

Stdlib only (``urllib``): bounded concurrency (``eval.judge.endpoint.concurrency``, default 8), a timeout per
request, retries with exponential backoff on 429, 5xx and timeouts, a progress bar. Greedy (temperature 0).

The key is read from the environment variable that ``api_key_env`` names, at request time, and is never written:
not into the cache, the results or any message. Answers are cached like in-process judgments (keyed by the
endpoint's identity and the messages), flushed as they arrive, so a failure loses nothing already judged.

A refused connection or a refused key stops the stage at once with what to do; a 429/5xx/timeout that outlasts
the retries stops it too, naming the status (a re-run continues from the cache).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from tunebench.core.config import JudgeEndpointConfig
from tunebench.core.errors import JudgeError
from tunebench.core.io import cache_root
from tunebench.evals.generation import GenerationCache, Messages

RETRY_STATUS = (429, 500, 502, 503, 504)
BACKOFF_S = 0.5
"""First retry waits this long; each further one twice as long (capped at BACKOFF_MAX_S)."""
BACKOFF_MAX_S = 30.0
FLUSH_EVERY = 16
"""Judgments written to the cache at least this often."""


class _Retry(JudgeError):
    """A response worth retrying (429, 5xx, timeout)."""


@dataclass
class EndpointJudge:
    """Judgments from an OpenAI-compatible chat completions server."""

    cfg: JudgeEndpointConfig
    max_new_tokens: int
    progress: bool = True
    cache_dir: str | None = None

    def identity(self) -> dict[str, Any]:
        return {"kind": "endpoint", "base_url": self.cfg.base_url.rstrip("/"), "model": self.cfg.model,
                "max_tokens": self.max_new_tokens, "temperature": 0}

    @property
    def url(self) -> str:
        return self.cfg.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        name = self.cfg.api_key_env
        if name:
            key = os.environ.get(name)
            if not key:
                raise JudgeError(f"eval.judge.endpoint.api_key_env names {name!r}, which is not set in the "
                                 f"environment; export {name}=<your key> (the key is never written anywhere)")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _once(self, messages: Messages, headers: dict[str, str]) -> str:
        body = json.dumps({"model": self.cfg.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_new_tokens}).encode("utf-8")
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                data = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            if e.code in RETRY_STATUS:
                raise _Retry(f"HTTP {e.code}") from None
            if e.code in (401, 403):
                raise JudgeError(f"{self.url} refused the key (HTTP {e.code}); check the key in "
                                 f"${self.cfg.api_key_env or '<no eval.judge.endpoint.api_key_env set>'}") from None
            raise JudgeError(f"{self.url} answered HTTP {e.code} ({e.reason}); check eval.judge.endpoint.base_url "
                             f"and model ({self.cfg.model!r})") from None
        except TimeoutError:  # socket.timeout is TimeoutError
            raise _Retry(f"no answer within {self.cfg.timeout_s:g} s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _Retry(f"no answer within {self.cfg.timeout_s:g} s") from None
            raise JudgeError(f"cannot reach the judge endpoint {self.url} ({e.reason}); start the server or fix "
                             "eval.judge.endpoint.base_url (README, 'Pairwise judge')") from None
        except ValueError:
            raise JudgeError(f"{self.url} answered with something that is not JSON; is it an OpenAI-compatible "
                             "server?") from None
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.url} answered without choices[0].message.content; is it an OpenAI-compatible "
                             "chat completions server?") from None

    def ask(self, messages: Messages, headers: dict[str, str]) -> str:
        """One judgment, retried with exponential backoff on 429, 5xx and timeouts.

        Raises:
            JudgeError: refused connection or key, other HTTP errors, or retries exhausted.
        """
        wait = BACKOFF_S
        for attempt in range(self.cfg.retries + 1):
            try:
                return self._once(messages, headers)
            except _Retry as e:
                if attempt == self.cfg.retries:
                    raise JudgeError(f"{self.url}: {e} after {self.cfg.retries + 1} attempts; the server is "
                                     "overloaded or failing. Lower eval.judge.endpoint.concurrency or raise timeout_s "
                                     "and run again (judgments already made are cached)") from None
                time.sleep(wait)
                wait = min(BACKOFF_MAX_S, wait * 2)
        raise AssertionError("unreachable")

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
            headers = self._headers()
            pending: dict[str, dict[str, Any]] = {}
            lock = threading.Lock()
            bar = tqdm(total=len(todo), desc="judge[endpoint]", disable=not self.progress)
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
