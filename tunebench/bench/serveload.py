"""`tunebench bench serve`: N concurrent streaming clients against an OpenAI-compatible server, on loopback.

Each client takes requests from one shared queue and streams ``/v1/chat/completions`` (``stream: true``); the time to
the first content chunk (TTFT), the whole request's latency and the streamed chunks (one per token in llama.cpp's
server) are recorded per request. Every ``--disconnect-every``-th request is dropped by its client after the first
chunk, as a user closing a tab does; the server must go on answering.

The benchmark checks what a load test is for, not only how fast:
- **no request lost**: every request that was not dropped on purpose ends with a finish reason and ``[DONE]``;
- **none answered twice**: no two requests get the same completion id, and no stream holds two finish reasons;
- **the server survives**: after the load (drops included) one more request is answered.

Bounded in count and time (``--requests`` per repeat, ``--timeout-s`` per request, ``--budget-s`` in all), and
refused on any host but loopback. With ``--run RUN`` it starts ``tunebench serve RUN`` itself (in a child process,
on a free port) and stops it after; with ``--url`` it loads a server already running (loopback only).
``--repeats`` runs the whole load several times: each figure is the median over repeats with a bootstrap interval
(``bench.repeats``). serve.json is the source of truth; serve.md renders it.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunebench.bench.host import host_lines, host_snapshot
from tunebench.bench.metrics import percentile
from tunebench.bench.repeats import median_interval
from tunebench.core.errors import BenchmarkError
from tunebench.core.io import atomic_write_json, atomic_write_text, git_commit, package_version
from tunebench.core.markdown import table
from tunebench.core.net import MODELS_PATH, await_models, free_port, is_loopback

PROMPTS = [
    "Name three primary colours.",
    "What is 12 times 7?",
    "Write one sentence about the sea.",
    "Give a synonym for 'happy'.",
    "What is the capital of Italy?",
    "Say hello in Spanish.",
    "List two fruits that are red.",
    "Explain what a noun is in one sentence.",
]
"""Short chat prompts the clients cycle through (request k asks PROMPTS[k % len] with its number appended)."""
READY_TIMEOUT_S = 180.0


@dataclass
class LoadSpec:
    url: str
    """Server root, e.g. http://127.0.0.1:8080 (``/v1/chat/completions`` is appended)."""
    clients: int = 4
    requests: int = 32
    """Requests per repeat, shared by the clients."""
    max_tokens: int = 32
    disconnect_every: int = 8
    """Every k-th request is dropped by its client after the first chunk (0: none)."""
    timeout_s: float = 120.0
    model: str = "served"


@dataclass
class Outcome:
    """One request as its client saw it."""

    index: int
    client: int
    ttft_s: float | None = None
    latency_s: float | None = None
    chunks: int = 0
    finish_reasons: int = 0
    done: bool = False
    dropped: bool = False
    completion_ids: list[str] = field(default_factory=list)
    error: str | None = None


def check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of ``url``; anything but a loopback host is refused (the benchmark loads a server hard)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname or not parsed.port:
        raise BenchmarkError(f"--url {url!r}: give the server as http://127.0.0.1:PORT (plain http, a port)")
    host = parsed.hostname
    if not is_loopback(host):
        raise BenchmarkError(
            f"--url {url!r}: bench serve only loads a server on this machine's loopback "
            "(127.0.0.1, ::1, localhost); start one with `tunebench serve RUN`"
        )
    return host, parsed.port


def stream_one(spec: LoadSpec, index: int, client: int, drop: bool) -> Outcome:
    """Stream one chat completion; record TTFT, latency, chunks, finish reasons and completion ids."""
    host, port = check_loopback(spec.url)
    out = Outcome(index, client, dropped=drop)
    body = json.dumps(
        {
            "model": spec.model,
            "stream": True,
            "max_tokens": spec.max_tokens,
            "temperature": 0.0,
            "messages": [{"role": "user", "content": f"{PROMPTS[index % len(PROMPTS)]} (#{index})"}],
        }
    )
    conn = http.client.HTTPConnection(host, port, timeout=spec.timeout_s)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            out.error = f"HTTP {resp.status}"
            return out
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                out.done = True
                break
            chunk = json.loads(data)
            if chunk.get("id") and chunk["id"] not in out.completion_ids:
                out.completion_ids.append(chunk["id"])
            choice = (chunk.get("choices") or [{}])[0]
            if (choice.get("delta") or {}).get("content"):
                out.chunks += 1
                if out.ttft_s is None:
                    out.ttft_s = time.perf_counter() - t0
                    if drop:  # the user closes the tab: the socket goes away mid-stream
                        conn.sock.shutdown(socket.SHUT_RDWR)
                        return out
            if choice.get("finish_reason"):
                out.finish_reasons += 1
        out.latency_s = time.perf_counter() - t0
    except (OSError, http.client.HTTPException, ValueError) as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return out


def run_load(spec: LoadSpec) -> tuple[list[Outcome], float]:
    """One repeat: ``spec.requests`` requests over ``spec.clients`` threads; (outcomes by index, wall seconds)."""
    todo: queue.Queue[int] = queue.Queue()
    for k in range(spec.requests):
        todo.put(k)
    outcomes: list[Outcome | None] = [None] * spec.requests

    def client(c: int) -> None:
        while True:
            try:
                k = todo.get_nowait()
            except queue.Empty:
                return
            drop = spec.disconnect_every > 0 and k % spec.disconnect_every == spec.disconnect_every - 1
            outcomes[k] = stream_one(spec, k, c, drop)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(spec.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [o for o in outcomes if o is not None], time.perf_counter() - t0


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1), ``bench.metrics.percentile``'s; None for no values."""
    return percentile(values, q * 100) if values else None


def summarize(outcomes: list[Outcome], wall_s: float, asked: int) -> dict[str, Any]:
    """One repeat's figures and its correctness checks."""
    kept = [o for o in outcomes if not o.dropped]
    ok = [o for o in kept if o.error is None and o.done and o.finish_reasons == 1]
    ids = [i for o in outcomes for i in o.completion_ids]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    lat = [o.latency_s for o in ok if o.latency_s is not None]
    return {
        "requests": asked,
        "finished": len(outcomes),
        "answered": len(ok),
        "dropped_on_purpose": sum(o.dropped for o in outcomes),
        "errors": [f"request {o.index}: {o.error}" for o in outcomes if o.error],
        "lost": [o.index for o in kept if o.error is None and not (o.done and o.finish_reasons >= 1)]
        + list(range(len(outcomes), asked)),
        "answered_twice": sorted(
            {o.index for o in outcomes if o.finish_reasons > 1 or len(o.completion_ids) > 1}
            | {o.index for o in outcomes for i in o.completion_ids if ids.count(i) > 1}
        ),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p95_s": pct(ttft, 0.95),
        "latency_p50_s": pct(lat, 0.5),
        "latency_p95_s": pct(lat, 0.95),
        "tokens_per_s": sum(o.chunks for o in outcomes) / wall_s if wall_s > 0 else None,
        "mean_chunks": statistics.mean([o.chunks for o in ok]) if ok else None,
        "wall_s": wall_s,
    }


def survives(spec: LoadSpec) -> bool:
    """One more request after the load (and its drops) is answered in full."""
    after = stream_one(spec, 10_000, -1, drop=False)
    return after.error is None and after.done and after.finish_reasons == 1


FIGURES = {
    "ttft_p50_s": "time to first token, p50",
    "ttft_p95_s": "time to first token, p95",
    "latency_p50_s": "latency, p50",
    "latency_p95_s": "latency, p95",
    "tokens_per_s": "aggregate tokens/s",
}


def bench_serve(spec: LoadSpec, repeats: int, budget_s: float) -> dict[str, Any]:
    """``repeats`` loads against a running server; the JSON record (figures, checks, settings)."""
    rows, t0 = [], time.perf_counter()
    for r in range(repeats):
        if r and time.perf_counter() - t0 > budget_s:
            break
        outcomes, wall = run_load(spec)
        row = summarize(outcomes, wall, spec.requests)
        row["repeat"] = r
        row["server_survived"] = survives(spec)
        rows.append(row)
    summary = {k: median_interval([row[k] for row in rows if row[k] is not None]) for k in FIGURES}
    checks = {
        "no_request_lost": all(not row["lost"] for row in rows),
        "none_answered_twice": all(not row["answered_twice"] for row in rows),
        "no_errors": all(not row["errors"] for row in rows),
        "server_survived_disconnects": all(row["server_survived"] for row in rows),
    }
    return {
        "settings": {k: v for k, v in asdict(spec).items() if k != "model"},
        "repeats_asked": repeats,
        "rows": rows,
        "summary": summary,
        "checks": checks,
        "passed": all(checks.values()),
    }


def start_server(run: str, quant: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`tunebench serve RUN --quant Q --port P` in a child on a free loopback port; (process, URL) once ready."""
    port = free_port()
    log = open(log_path, "w")  # noqa: SIM115 (the child writes it until it stops)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunebench", "serve", run, "--quant", quant, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    state = await_models(url, proc, READY_TIMEOUT_S, poll_s=0.5)
    if state == "exited":
        raise BenchmarkError(f"`tunebench serve {run}` exited {proc.returncode} before it was ready; see {log_path}")
    if state == "timeout":
        proc.terminate()
        raise BenchmarkError(f"`tunebench serve {run}` was not ready within {READY_TIMEOUT_S:.0f} s; see {log_path}")
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def served_model_id(url: str) -> str:
    try:
        with urllib.request.urlopen(url + MODELS_PATH, timeout=10) as r:
            return str(json.load(r)["data"][0]["id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "served"


def run_bench_serve(args: Any) -> int:
    """The command: start or reach the server, load it, write serve.json and serve.md; exit 0 when every check
    held, 1 when one did not (the report says which)."""
    if args.clients < 1 or args.requests < 1 or args.max_tokens < 1 or args.disconnect_every < 0:
        raise BenchmarkError("--clients, --requests and --max-tokens must be at least 1, --disconnect-every 0 or more")
    if bool(args.url) == bool(args.run):
        raise BenchmarkError(
            "give one of --url http://127.0.0.1:PORT (a running server) or --run RUN (tunebench serve starts on it)"
        )
    if args.url:
        check_loopback(args.url)
    elif not Path(args.run, "config.yaml").is_file():
        raise BenchmarkError(f"--run {args.run}: not a tunebench run folder (no config.yaml)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proc = None
    host = {"before": host_snapshot()}
    if args.run:
        proc, url = start_server(args.run, args.quant, out / "server.log")
    else:
        url = args.url.rstrip("/").removesuffix("/v1")
    try:
        spec = LoadSpec(
            url,
            args.clients,
            args.requests,
            args.max_tokens,
            args.disconnect_every,
            args.timeout_s,
            served_model_id(url),
        )
        result = bench_serve(spec, args.repeats, args.budget_s)
    finally:
        if proc is not None:
            stop_server(proc)
    host["after"] = host_snapshot()
    result.update(
        server={
            "url": url,
            "model": spec.model,
            "engine": f"llama-cpp-python {package_version('llama_cpp_python')}" if args.run else "as found at --url",
            "run": args.run,
            "quant": args.quant if args.run else None,
        },
        host=host,
        environment={
            "python": sys.version.split()[0],
            "tunebench_commit": git_commit(),
            "llama_cpp_python": package_version("llama_cpp_python"),
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command="tunebench bench " + " ".join(args.argv),
    )
    atomic_write_json(out / "serve.json", result)
    atomic_write_text(out / "serve.md", render_serve_md(result))
    print(render_serve_md(result))
    return 0 if result["passed"] else 1


def _s(x: Any, unit: str = "s", fmt: str = ".3f") -> str:
    return "–" if x is None else f"{format(x, fmt)} {unit}".strip()


def render_serve_md(result: dict[str, Any]) -> str:
    """serve.json -> Markdown (the JSON is the source of truth)."""
    st, srv, env = result["settings"], result["server"], result["environment"]
    lines = [
        "# Serving load: concurrent streaming clients",
        "",
        f"- server: {srv['engine']} at {srv['url']}, model `{srv['model']}`"
        + (f" (run `{srv['run']}`, {srv['quant']})" if srv.get("run") else ""),
        f"- load: {st['clients']} clients, {st['requests']} requests per repeat, max_tokens {st['max_tokens']}, "
        f"greedy; every {st['disconnect_every']}th request dropped by its client after the first chunk"
        if st["disconnect_every"]
        else f"- load: {st['clients']} clients, {st['requests']} requests per repeat",
        *host_lines(result.get("host")),
        f"- versions: python {env['python']} · llama-cpp-python {env['llama_cpp_python']} · tunebench commit "
        f"`{env['tunebench_commit']}` · created {result['created']} · command `{result['command']}`",
        "",
    ]
    rows = []
    for k, name in FIGURES.items():
        m = result["summary"][k]
        unit, fmt = ("tok/s", ".1f") if k == "tokens_per_s" else ("s", ".3f")
        ci = f"[{format(m['ci'][0], fmt)}, {format(m['ci'][1], fmt)}]" if m.get("ci") else "–"
        rows.append(
            [
                name,
                _s(m["median"], unit, fmt),
                ci,
                f"{_s(m['min'], unit, fmt)} – {_s(m['max'], unit, fmt)}",
                m["repeats"],
            ]
        )
    lines += [table(rows, ["figure", "median over repeats", "95% interval", "range", "repeats"]), ""]
    checks = result["checks"]
    lines += [
        table([[k.replace("_", " "), "yes" if v else "**no**"] for k, v in checks.items()], ["check", "held"]),
        "",
    ]
    per = [
        [
            r["repeat"],
            r["answered"],
            r["dropped_on_purpose"],
            len(r["errors"]),
            len(r["lost"]),
            len(r["answered_twice"]),
            _s(r["wall_s"], "s", ".1f"),
        ]
        for r in result["rows"]
    ]
    lines += [table(per, ["repeat", "answered", "dropped on purpose", "errors", "lost", "answered twice", "wall"])]
    for r in result["rows"]:
        lines += [f"- repeat {r['repeat']}: {e}" for e in r["errors"][:5]]
    return "\n".join(lines) + "\n"
