"""`tunebench serve RUN`: llama-cpp-python's OpenAI-compatible server on the run's exported GGUF (in a child process,
``app.serve_app``: every prompt evaluated whole, so temperature 0 is deterministic; a malformed body answered 400;
one log line per request).

The file is the one `tunebench export --gguf` wrote and the contract check passed (exported first when
missing, unless --no-export). The chat template is the GGUF's own (``chat_format=chat_template.default``,
never a built-in look-alike). Binding is loopback by default; any other host needs an API key, read from
the environment variable a flag names (never from the command line, where `ps` shows it). The server runs
as a child process; "ready" is printed only once ``/v1/models`` answers, and SIGINT/SIGTERM stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tunebench.core.errors import PipelineError
from tunebench.core.io import atomic_write_text, read_json, read_text
from tunebench.core.net import MODELS_PATH, await_models, free_port, is_loopback
from tunebench.core.runtimes import LLAMA_CPP, VLLM, gguf_file_name
from tunebench.evals.llamacpp import GGUF_TEMPLATE_FORMAT, cpu_threads, require_llama_cpp
from tunebench.models.loading import gguf_field

READY_TIMEOUT_S = 180.0
"""Loading a 1B q8_0 on 2 cores takes seconds; a minute more covers a cold page cache."""
HEALTH_PATH = MODELS_PATH
"""llama-cpp-python's server has no /health; its model list answers once the model is loaded."""


class ServeError(PipelineError):
    """The server cannot be started as asked (exit 2)."""


@dataclass
class ServeOptions:
    """What `tunebench serve` was asked for."""

    run: Path
    quant: str = "q8_0"
    host: str = "127.0.0.1"
    port: int = 8080
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (required off loopback)."""
    no_export: bool = False
    n_ctx: int = 4096
    engine: str = LLAMA_CPP
    """``llama.cpp`` (the exported GGUF, CPU or GPU) or ``vllm`` (the base + the run's adapter as a runtime LoRA)."""
    verbose: bool = False
    """The server's own logs too (llama.cpp's model load, uvicorn's lines), not only one line per request."""


def api_key(opts: ServeOptions) -> str | None:
    """The key from the named variable; required when binding anything but loopback.

    Raises:
        ServeError: a non-loopback host without --api-key-env, or the variable unset/empty.
    """
    if opts.api_key_env is None:
        if not is_loopback(opts.host):
            raise ServeError(
                f"--host {opts.host}: serving beyond this machine needs an API key; put it in an "
                "environment variable and name it with --api-key-env NAME (or bind 127.0.0.1)"
            )
        return None
    key = os.environ.get(opts.api_key_env, "")
    if not key:
        raise ServeError(
            f"--api-key-env {opts.api_key_env}: that environment variable is unset or empty; "
            f"export {opts.api_key_env}=<a long random key> first"
        )
    return key


def check_port(host: str, port: int) -> None:
    """Raises ServeError when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServeError(
                f"{host}:{port}: cannot listen there ({e.strerror}); pick another --port (or stop what holds it)"
            ) from None


VLLM_LORA_NAME = "tuned"
"""The model name clients send to reach the adapter on vLLM (the base answers under its own name)."""


def vllm_command(opts: ServeOptions) -> list[str]:
    """``vllm serve BASE --enable-lora --lora-modules tuned=RUN/adapter ...``.

    The chat template is the adapter's own, written to RUN/export/chat_template.jinja (the base's may differ from
    the one the run trained with); the LoRA rank cap is the adapter's; the key travels as VLLM_API_KEY in the
    environment, never on the command line. Not run here (vLLM needs a GPU).

    Raises:
        ServeError: no adapter, or a base vLLM cannot load with a LoRA (a GGUF such as the packaged model).
    """
    from tunebench.models.adapters import adapter_config, adapter_manifest

    adapter = opts.run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ServeError(f"{adapter}: no trained adapter (adapter_config.json) to serve; train the run first")
    model = adapter_manifest(adapter).get("model")
    base = str((model.get("ref") if isinstance(model, dict) else None) or "") or str(
        adapter_config(adapter).get("base_model_name_or_path") or ""
    )
    if not base or base.startswith("packaged:") or base.endswith(".gguf"):
        raise ServeError(
            f"--engine vllm serves a hub or folder base with the adapter as a runtime LoRA; this run's "
            f"base is {base or 'not recorded'!r}. Serve its GGUF with the default --engine llama.cpp"
        )
    rank = adapter_config(adapter).get("r", 16)
    if type(rank) is not int:
        raise ServeError(
            f"{adapter / 'adapter_config.json'}: r must be the LoRA rank, an integer; save the adapter again"
        )
    template = _adapter_template(adapter)
    cmd = [
        "vllm",
        "serve",
        base,
        "--enable-lora",
        "--lora-modules",
        f"{VLLM_LORA_NAME}={adapter}",
        "--max-lora-rank",
        str(max(rank, 8)),
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--max-model-len",
        str(opts.n_ctx),
        "--seed",
        "0",
    ]
    if template is not None:
        path = opts.run / "export" / "chat_template.jinja"
        atomic_write_text(path, template)
        cmd += ["--chat-template", str(path)]
    return cmd


def _adapter_template(adapter: Path) -> str | None:
    """The chat template the run trained with (saved beside the adapter), or None when it saved none."""
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        path = adapter / name
        if not path.is_file():
            continue
        fix = "save the adapter again (it holds the tokenizer it trained with)"
        if name.endswith(".jinja"):
            return read_text(path, fix)
        config = read_json(path, fix)
        template = config.get("chat_template") if isinstance(config, dict) else None
        if isinstance(template, str):
            return template
    return None


def require_vllm() -> str:
    """The ``vllm`` executable, or a ServeError naming what to install."""
    exe = shutil.which("vllm")
    if exe is None:
        raise ServeError(
            "--engine vllm needs vLLM (`pip install vllm` on a CUDA machine; it is not a tunebench "
            "extra because it pins its own torch); or serve the GGUF with --engine llama.cpp"
        )
    return exe


def serve_vllm(opts: ServeOptions, key: str | None) -> int:
    """vLLM in the foreground, the adapter as LoRA ``tuned``, until SIGINT or SIGTERM; 0 after a clean stop."""
    cmd = vllm_command(opts)
    require_vllm()
    check_port(opts.host, opts.port)
    env = {**os.environ, **({"VLLM_API_KEY": key} if key else {})}
    proc = subprocess.Popen(cmd, env=env)
    url = url_of(opts.host, opts.port)
    try:
        wait_ready(url, proc, key, timeout=900.0)  # vLLM loads and profiles the model first
        print(
            f"ready: vLLM on {cmd[2]} + LoRA {VLLM_LORA_NAME!r} ({opts.run / 'adapter'}) at {url}/v1; send "
            f'"model": "{VLLM_LORA_NAME}"',
            flush=True,
        )
        print("stop:  Ctrl-C (or SIGTERM)", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        stop(proc)
    return 0


def served_gguf(opts: ServeOptions, probe_files: list[str] | None = None) -> Path:
    """The run's ``export/model-<quant>.gguf``, exported (and contract-checked) first when missing.

    Raises:
        ServeError: no such file with --no-export, or a GGUF without a chat template.
    """
    path = opts.run / "export" / gguf_file_name(opts.quant)
    if not path.exists():
        if opts.no_export:
            raise ServeError(
                f"{path}: not exported, and --no-export was given; run `tunebench export {opts.run} "
                f"--gguf --quant {opts.quant}` first, or drop --no-export"
            )
        from tunebench.app.pipeline import export_and_check

        export_and_check(opts.run, [opts.quant], probe_files or [])
    check_template(path)
    return path


def check_template(path: Path) -> None:
    """Raises ServeError when the GGUF carries no ``tokenizer.chat_template`` (the server would guess one)."""
    if not gguf_field(path, "tokenizer.chat_template"):
        raise ServeError(
            f"{path}: the GGUF metadata has no tokenizer.chat_template, so the server would format "
            "chats with a default that is not the run's; re-export with `tunebench export RUN --gguf`"
        )


def server_command(gguf: Path, host: str, port: int, n_ctx: int, verbose: bool = False) -> list[str]:
    """The child's argv (the API key travels in its environment as API_KEY, not here): ``app.serve_app``, which
    takes llama-cpp-python's server flags."""
    return [
        sys.executable,
        "-m",
        "tunebench.app.serve_app",
        "--model",
        str(gguf),
        "--host",
        host,
        "--port",
        str(port),
        "--chat_format",
        GGUF_TEMPLATE_FORMAT,
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(cpu_threads()),
        "--seed",
        "0",
        "--interrupt_requests",
        "False",
        *(["--verbose", "True"] if verbose else []),
    ]  # its default cuts a stream short when another request
    # arrives: under concurrent clients most answers ended without a finish reason (`tunebench bench serve` found it)


def url_of(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def wait_ready(url: str, proc: subprocess.Popen, key: str | None, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll the model list until it answers 200.

    Raises:
        ServeError: the server exited, or did not answer within ``timeout`` seconds.
    """
    state = await_models(url, proc, timeout, key)
    if state == "exited":
        raise ServeError(
            f"the server exited with code {proc.returncode} before it was ready; "
            "its log says why (run with -v, or see the server log)"
        )
    if state == "timeout":
        raise ServeError(
            f"{url}: no answer on {HEALTH_PATH} after {timeout:.0f}s; the model may be too large for this machine"
        )


def stop(proc: subprocess.Popen, grace: float = 10.0) -> int:
    """SIGTERM the child, then SIGKILL it after ``grace`` seconds; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running_server(
    gguf: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    key: str | None = None,
    n_ctx: int = 4096,
    log: IO[str] | None = None,
    verbose: bool = False,
) -> Iterator[str]:
    """Start the server on ``gguf``, wait until it answers, yield its URL, stop it on exit (its one line per request
    go to ``log``, else to this process's stderr)."""
    require_llama_cpp()
    port = port or free_port(host)
    check_port(host, port)
    env = {k: v for k, v in os.environ.items() if k != "API_KEY"}  # pydantic-settings reads the key from here
    if key:
        env["API_KEY"] = key
    proc = subprocess.Popen(
        server_command(gguf, host, port, n_ctx, verbose),
        env=env,
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else None,
    )
    try:
        url = url_of(host, port)
        wait_ready(url, proc, key)
        yield url
    finally:
        stop(proc)


def curl_example(url: str, key_env: str | None) -> str:
    auth = f' -H "Authorization: Bearer ${key_env}"' if key_env else ""
    body = json.dumps({"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64})
    return f"curl -s {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'"


def serve(opts: ServeOptions, probe_files: list[str] | None = None) -> int:
    """Run the server in the foreground until SIGINT or SIGTERM; returns 0 after a clean stop.

    Raises:
        ServeError / ModelError: bad input (see the module docstring), before anything starts.
    """
    key = api_key(opts)
    if opts.engine == VLLM:
        return serve_vllm(opts, key)
    require_llama_cpp()
    check_port(opts.host, opts.port)
    gguf = served_gguf(opts, probe_files)
    stopping = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_signal)
    try:
        with running_server(gguf, opts.host, opts.port, key, opts.n_ctx, verbose=opts.verbose) as url:
            print(f"ready: {gguf.name} (llama.cpp, the GGUF's chat template) at {url}/v1", flush=True)
            print(f"try:   {curl_example(url, opts.api_key_env)}", flush=True)
            print("stop:  Ctrl-C (or SIGTERM)", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, old)
