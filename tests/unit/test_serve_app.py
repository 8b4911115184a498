"""The server `tunebench serve` starts refuses a body it cannot serve before any route reads it (issue 40, item 9);
the refusals' HTTP side, on a real server, is in tests/integration/test_llamacpp.py."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] (scripts/setup.sh builds it)")

from tunebench.app.serve_app import refusal  # noqa: E402


@pytest.mark.parametrize(
    "body, path, code, needle",
    [
        (b'{"messages": [', "/v1/chat/completions", "invalid_json", "not valid JSON"),
        (b"\xff\xfe", "/v1/chat/completions", "invalid_json", "not valid JSON"),
        (b"", "/v1/completions", "invalid_json", "not valid JSON"),
        (b"[1, 2]", "/v1/chat/completions", "invalid_json", "must be a JSON object, not list"),
        (b'{"messages": "hi"}', "/v1/chat/completions", "invalid_request", "messages: Input should be a valid list"),
        (b'{"prompt": "x", "max_tokens": "many"}', "/v1/completions", "invalid_request", "max_tokens"),
    ],
)
def test_a_body_that_cannot_be_served_is_refused_saying_why(body, path, code, needle):
    message, got = refusal(body, path)
    assert got == code and needle in message


def test_a_valid_request_passes():
    assert refusal(b'{"messages": [{"role": "user", "content": "hi"}]}', "/v1/chat/completions") is None
    assert refusal(b'{"anything": 1}', "/extras/tokenize/count") is None  # JSON, on a route with no model here
