"""Loopback and local-server helpers shared by `tunebench serve` (app) and `bench serve` (bench): which hosts are
this machine's loopback, a free port, and waiting for a child server's OpenAI model list. No tunebench imports:
each caller raises its own error with its own advice."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Literal

MODELS_PATH = "/v1/models"
"""What an OpenAI-compatible server answers once its model is loaded."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests, --port 0 and a benchmark's own server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def await_models(
    url: str, proc: subprocess.Popen, timeout: float, key: str | None = None, poll_s: float = 0.25
) -> Literal["ready", "exited", "timeout"]:
    """Poll ``url``'s model list until it answers 200 (``ready``), the child exits (``exited``) or ``timeout``
    seconds pass (``timeout``)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        try:
            with urllib.request.urlopen(urllib.request.Request(url + MODELS_PATH, headers=headers), timeout=2) as r:
                if r.status == 200:
                    return "ready"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(poll_s)
    return "timeout"
