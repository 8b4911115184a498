"""The server process `tunebench serve` starts: llama-cpp-python's OpenAI-compatible app, taking every flag
``python -m llama_cpp.server`` takes, with three changes:

- every prompt is evaluated whole (``evals.llamacpp_whole``): at temperature 0 the same request gets the same
  answer, whatever was asked before;
- a body that is not JSON, or not a valid request, gets HTTP 400 with an OpenAI-style error
  (``{"error": {"message", "type", "param", "code"}}``) and one log line; the library answered 500 and logged a
  traceback;
- one log line per request (client, method, path, status, seconds, and the reason of a refusal); llama.cpp's load
  log and uvicorn's own lines only with ``--verbose true`` (`tunebench -v serve`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn  # the serve extra (llama-cpp-python[server]); this module runs only as the server's child
from llama_cpp.server import app as server_app
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest, CreateEmbeddingRequest
from pydantic import BaseModel, ValidationError

from tunebench.core.errors import InvalidInput
from tunebench.core.io import parse_json
from tunebench.evals.llamacpp_whole import whole_prompts

log = logging.getLogger("tunebench.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": CreateChatCompletionRequest,
    "/v1/completions": CreateCompletionRequest,
    "/v1/engines/copilot-codex/completions": CreateCompletionRequest,
    "/v1/embeddings": CreateEmbeddingRequest,
}
"""The endpoints whose body is checked against the library's own request model before the route reads it."""


def refusal(body: bytes, path: str) -> tuple[str, str] | None:
    """Why a POST body cannot be served (``(message, code)``), or None when it is a valid request.

    Args:
        body: the raw request body.
        path: the request path; known endpoints check the body against their request model too.
    """
    try:
        data = parse_json(body, "body", "send a JSON object", InvalidInput)
    except InvalidInput as e:
        return f"the request body is not valid JSON ({e})", "invalid_json"
    if not isinstance(data, dict):
        return f"the request body must be a JSON object, not {type(data).__name__}", "invalid_json"
    model = REQUEST_MODELS.get(path)
    if model is None:
        return None
    try:
        model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}", "invalid_request"
    return None


class RequestLog:
    """ASGI middleware: a POST body that is not a valid request is answered 400 here, before any route; every
    request is logged in one line when its response is done."""

    def __init__(self, app: ASGIApp, api_key: str | None = None) -> None:
        self.app = app
        self.authorization = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (HTTP requests checked and logged; lifespan and the rest passed through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, why = time.perf_counter(), [500], ""

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if scope["method"] == "POST" and self._authorized(scope):  # else the app answers 401, as before
                body = await _read_body(receive)
                refused = refusal(body, scope["path"])
                if refused is not None:
                    why = refused[0]
                    await _send_error(send_noting_status, 400, *refused)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_noting_status)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info(
                "%s %s %s %d %.2f s%s",
                client[0],
                scope["method"],
                scope["path"],
                status[0],
                time.perf_counter() - started,
                f": {why}" if why else "",
            )

    def _authorized(self, scope: Scope) -> bool:
        """The request carries the server's key, or the server has none."""
        if self.authorization is None:
            return True
        return dict(scope.get("headers") or []).get(b"authorization") == self.authorization


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left before sending its body
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then the connection's own messages (a streamed answer
    listens for the client's disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _send_error(send: Send, status: int, message: str, code: str) -> None:
    payload = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    """Parse llama-cpp-python's server flags, load the model, serve until stopped."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m tunebench.app.serve_app", description=__doc__)
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    server = parse_model_from_args(ServerSettings, args)
    model = parse_model_from_args(ModelSettings, args)
    verbose = "--verbose" in argv and model.verbose  # the library's default is verbose: ours is one line a request
    model.verbose = verbose
    handler = logging.StreamHandler(sys.stderr)  # the request lines only; libraries' records too with --verbose
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    app = server_app.create_app(server_settings=server, model_settings=[model])
    # the library constructs its Llama itself: adopt the loaded one (no state added, `generate` overridden)
    whole_prompts(server_app._llama_proxy())  # type: ignore[misc]
    uvicorn.run(
        RequestLog(app, server.api_key),
        host=server.host,
        port=server.port,
        ssl_keyfile=server.ssl_keyfile,
        ssl_certfile=server.ssl_certfile,
        log_level="info" if verbose else "warning",
        access_log=verbose,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
