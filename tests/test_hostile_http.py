"""Hostile HTTP input gets a clear 4xx in OpenAI's envelope, in time, and the server serves the
next plain request.

Bodies are sent as raw bytes (httpx would not write most of them) and, where the HTTP framing
itself is the attack, over a raw socket. Deadlines only keep a broken server from hanging the
suite; nothing here measures time.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from tests.clients import HELLO
from tests.conftest import ServerFactory
from tests.servers import LiveServer
from tests.spec import validate

#: Generous: a server that answers at all answers well inside it.
DEADLINE_SECONDS = 30.0

ECHO_HELLO = {"model": "echo", "messages": HELLO}


def _post_raw(
    server: LiveServer, body: bytes, content_type: str = "application/json"
) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=body,
        headers={"Content-Type": content_type},
        timeout=DEADLINE_SECONDS,
    )


def _error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error"
    return error


def _still_serving(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions", json=ECHO_HELLO, timeout=DEADLINE_SECONDS
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hi"


def _chat_body(**fields: Any) -> bytes:
    """A chat request as JSON text; ``json`` writes a lone surrogate as its escape."""
    return json.dumps({**ECHO_HELLO, **fields}).encode()


# --- lone surrogates ----------------------------------------------------------------------

LONE = "\ud800"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "user", "content": LONE}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": f"ok {LONE} ok"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "\udc00"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": LONE}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"messages": [*HELLO, {"role": "assistant", "content": "x", "name": LONE}]},
            "messages[1].name",
        ),
        ({"metadata": {"topic": LONE}}, "metadata.topic"),
        ({"metadata": {LONE: "x"}}, "metadata.\\ud800"),
        ({"user": LONE}, "user"),
        ({"stop": LONE}, "stop"),
        ({"stop": ["a", LONE]}, "stop[1]"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": LONE}}]},
            "tools[0].function.description",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": LONE}}},
            "response_format.json_schema.name",
        ),
    ],
)
def test_a_lone_surrogate_anywhere_is_400_naming_the_field(
    server: LiveServer, fields: dict[str, Any], param: str
) -> None:
    error = _error(_post_raw(server, _chat_body(**fields)))

    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert "unpaired UTF-16 surrogate" in error["message"]
    assert param in error["message"]
    _still_serving(server)


def test_an_escaped_surrogate_pair_is_one_character(server: LiveServer) -> None:
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "\\ud83d\\ude00!"}]}'

    response = _post_raw(server, body)

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "\U0001f600!"


def test_every_route_with_a_json_body_refuses_a_lone_surrogate(server: LiveServer) -> None:
    """Each documented request body, its first string replaced by a lone surrogate."""
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    tried = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue  # no body, or not ours to read (LiveKit's signed webhooks)
            reference = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            example = schemas[reference.rsplit("/", 1)[-1]]["examples"][0]
            found = _first_string_replaced(example)
            assert found is not None, (method, path)
            body, param = found
            for name, value in _PATH_VALUES.items():
                path = path.replace(name, value)
            url = f"{server.base_url}{path}"

            response = httpx.request(method, url, content=json.dumps(body).encode())

            error = _error(response)
            assert error["param"] == param, (method, path)
            tried.append(f"{method.upper()} {path}")
    assert sorted(tried) == [
        "POST /admin/keys",
        "POST /v1/chat/completions",
        "POST /v1/chat/completions/chatcmpl-x",
        "POST /v1/conversations",
        "POST /v1/conversations/conv_x",
        "POST /v1/conversations/conv_x/items",
        "POST /v1/responses",
        "POST /v1/responses/input_tokens",
        "POST /v1/voice/sessions",
    ]


#: Ids for the path parameters: the body is refused before any id is looked up.
_PATH_VALUES = {"{completion_id}": "chatcmpl-x", "{conversation_id}": "conv_x"}


def _first_string_replaced(value: Any, path: str = "") -> tuple[Any, str] | None:
    """``value`` with its first string replaced by a lone surrogate, and that string's param."""
    if isinstance(value, str):
        return LONE, path
    if isinstance(value, list):
        children: list[tuple[Any, Any, str]] = [
            (index, child, f"{path}[{index}]") for index, child in enumerate(value)
        ]
    elif isinstance(value, dict):
        children = [(key, child, f"{path}.{key}" if path else key) for key, child in value.items()]
    else:
        return None
    for key, child, where in children:
        found = _first_string_replaced(child, where)
        if found is not None:
            copy: Any = list(value) if isinstance(value, list) else dict(value)
            copy[key] = found[0]
            return copy, found[1]
    return None


# --- bytes that are not the JSON they claim to be -----------------------------------------


def test_invalid_utf8_is_400(server: LiveServer) -> None:
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "caf\xe9"}]}'

    error = _error(_post_raw(server, body))

    assert error["code"] == "invalid_json"
    assert "UTF-8" in error["message"]
    _still_serving(server)


def test_a_surrogate_encoded_as_utf8_bytes_is_400(server: LiveServer) -> None:
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'

    error = _error(_post_raw(server, body))

    assert error["code"] == "invalid_json"
    _still_serving(server)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
        ({"metadata": {"k": "\x00"}}, "metadata.k"),
        ({"user": "\x00"}, "user"),
    ],
)
def test_a_nul_character_in_a_string_is_400(
    server: LiveServer, fields: dict[str, Any], param: str
) -> None:
    error = _error(_post_raw(server, _chat_body(**fields)))

    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert "NUL" in error["message"]
    _still_serving(server)


def test_a_raw_nul_byte_is_malformed_json(server: LiveServer) -> None:
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "a\x00b"}]}'

    assert _error(_post_raw(server, body))["code"] == "invalid_json"


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_json_nested_100000_levels_deep_is_400(server: LiveServer, opening: bytes) -> None:
    closing = b"]" if opening == b"[" else b"}"
    body = b'{"model": "echo", "messages": [], "moderation": ' + opening * 100_000
    body += closing * 100_000 + b"}"

    error = _error(_post_raw(server, body))

    assert error["code"] == "invalid_json"
    assert "nested more than 200 levels deep" in error["message"]
    _still_serving(server)


@pytest.mark.parametrize("field", ["tools", "response_format", "moderation"])
def test_nesting_deeper_than_pydantic_serialises_is_400_naming_the_field(
    server: LiveServer, field: str
) -> None:
    """Deep enough to parse, too deep for Pydantic to write out again for a provider."""
    deep = b"[" * 300 + b"]" * 300
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "'
    body += field.encode() + b'": {"type": "x", "nested": ' + deep + b"}}"

    error = _error(_post_raw(server, body))

    assert (error["param"], error["code"]) == (field, "invalid_json")


def test_nesting_within_the_limit_is_read(server: LiveServer) -> None:
    body = _chat_body().replace(
        b'"model"', b'"moderation": ' + b"[" * 199 + b"]" * 199 + b', "model"'
    )

    assert _post_raw(server, body).status_code == 200


@pytest.mark.parametrize(
    "message", [b"{}", b'{"role":"user","content":""}'], ids=["empty", "valid"]
)
def test_200000_tiny_messages_are_refused_before_validation(
    start_server: ServerFactory, message: bytes
) -> None:
    server = start_server(max_body_bytes=8 * 1024 * 1024)
    body = b'{"model": "echo", "messages": [' + b",".join([message] * 200_000) + b"]}"

    error = _error(_post_raw(server, body))

    assert (error["param"], error["code"]) == ("messages", "invalid_value")
    assert "more than 50000 JSON values" in error["message"]
    _still_serving(server)


def test_a_long_conversation_is_still_served(server: LiveServer) -> None:
    messages = [{"role": "user", "content": f"turn {turn}"} for turn in range(2048)]

    response = _post_raw(server, _chat_body(messages=messages))

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "turn 2047"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'"temperature": 1e400', "temperature"),
        (b'"seed": -1e400', "seed"),
        (b'"moderation": {"score": 1e999}', "moderation.score"),
        (b'"temperature": NaN', "temperature"),
        (b'"top_p": Infinity', "top_p"),
        (b'"logit_bias": {"1": -Infinity}', "logit_bias.1"),
        (b'"max_tokens": ' + b"9" * 100, "max_tokens"),
        (b'"max_completion_tokens": ' + b"9" * 5000, "max_completion_tokens"),
        (b'"seed": 18446744073709551616', "seed"),
    ],
)
def test_numbers_json_or_64_bits_cannot_hold_are_400(
    server: LiveServer, raw: bytes, param: str
) -> None:
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], ' + raw + b"}"

    error = _error(_post_raw(server, body))

    assert (error["param"], error["code"]) == (param, "invalid_value")
    _still_serving(server)


def test_numbers_at_the_edges_of_64_bits_are_read(server: LiveServer) -> None:
    body = _chat_body(seed=-(2**63), moderation={"big": 2**64 - 1})
    body = body.replace(b'"big"', b'"tiny": 1e-400, "big"')  # rounds to 0.0, as JSON allows

    assert _post_raw(server, body).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            b'{"model": "echo", "model": "other", "messages": [{"role": "user", "content": "hi"}]}',
            "model",
        ),
        (
            b'{"model": "echo", "messages": [{"role": "user", "role": "system", "content": "x"}]}',
            "messages[0].role",
        ),
        (
            b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], '
            b'"metadata": {"a": "1", "b": "2", "a": "3"}}',
            "metadata.a",
        ),
    ],
)
def test_a_duplicate_key_is_400_naming_it(server: LiveServer, body: bytes, param: str) -> None:
    error = _error(_post_raw(server, body))

    assert (error["param"], error["code"]) == (param, "invalid_json")
    assert "twice" in error["message"]
    _still_serving(server)


@pytest.mark.parametrize("body", [b'"hello"', b"[]", b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_400(server: LiveServer, body: bytes) -> None:
    error = _error(_post_raw(server, body))

    assert (error["param"], error["code"]) == (None, "invalid_json")
    _still_serving(server)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "nonsense",
    ],
)
def test_a_wrong_content_type_is_400(server: LiveServer, content_type: str) -> None:
    response = _post_raw(server, _chat_body(), content_type)

    assert _error(response)["code"] == "invalid_json"
    _still_serving(server)


# --- the HTTP framing -----------------------------------------------------------------------


def _exchange(server: LiveServer, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_SECONDS) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def _head_and_body(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, body


def test_oversized_headers_are_431_in_the_envelope(server: LiveServer) -> None:
    """uvicorn with httptools sets no header limit: 100 KB of headers reach the app, which
    refuses them and closes the connection."""
    request = b"GET /health HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 100_000 + b"\r\n\r\n"

    status_line, headers, body = _head_and_body(_exchange(server, request))

    assert status_line.startswith("HTTP/1.1 431")
    assert headers["connection"] == "close"
    assert headers["x-content-type-options"] == "nosniff"
    error = json.loads(body)["error"]
    validate("ErrorResponse", {"error": error})
    assert error["code"] == "headers_too_large"
    _still_serving(server)


def test_many_small_headers_count_together(server: LiveServer) -> None:
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"b" * 100) for n in range(1000))
    request = b"GET /health HTTP/1.1\r\nHost: test\r\n" + padding + b"\r\n"

    status_line, _, _ = _head_and_body(_exchange(server, request))

    assert status_line.startswith("HTTP/1.1 431")


def test_large_but_reasonable_headers_are_served(server: LiveServer) -> None:
    response = httpx.get(f"{server.base_url}/health", headers={"X-Padding": "c" * 16_000})

    assert response.status_code == 200


def _body_request(declared: int) -> bytes:
    """The head of a chat request whose body follows as the test pleases."""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % declared
    )


def test_a_body_trickling_in_is_cut_off_with_408(start_server: ServerFactory) -> None:
    server = start_server(body_timeout_seconds=1.0)
    body = json.dumps(ECHO_HELLO).encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_SECONDS) as conn:
        conn.sendall(_body_request(len(body)))
        conn.settimeout(0.3)  # the pause between bytes: each wait for an answer is one
        answer = b""
        for byte in body:  # had the server no deadline, it would answer 200 after the last
            conn.sendall(bytes([byte]))
            try:
                answer = conn.recv(65536)
            except TimeoutError:
                continue
            break
        conn.settimeout(DEADLINE_SECONDS)
        while chunk := conn.recv(65536):
            answer += chunk

    status_line, headers, payload = _head_and_body(answer)
    assert status_line.startswith("HTTP/1.1 408")
    assert headers["connection"] == "close"
    assert json.loads(payload)["error"]["code"] == "request_timeout"
    _still_serving(server)


def test_a_body_that_never_comes_is_cut_off_with_408(start_server: ServerFactory) -> None:
    server = start_server(body_timeout_seconds=0.5)

    status_line, _, payload = _head_and_body(_exchange(server, _body_request(100)))

    assert status_line.startswith("HTTP/1.1 408")
    error = json.loads(payload)["error"]
    validate("ErrorResponse", {"error": error})
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
    _still_serving(server)


def test_a_body_sent_in_pieces_within_the_deadline_is_served(start_server: ServerFactory) -> None:
    server = start_server(body_timeout_seconds=DEADLINE_SECONDS)
    body = json.dumps(ECHO_HELLO).encode()

    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_SECONDS) as conn:
        conn.sendall(_body_request(len(body)))
        pieces = [body[start : start + 10] for start in range(0, len(body), 10)]
        conn.settimeout(0.05)
        for piece in pieces[:-1]:  # a pause after each piece but the last
            conn.sendall(piece)
            with pytest.raises(TimeoutError):
                conn.recv(65536)  # nothing to answer yet: the body is not all there
        conn.sendall(pieces[-1])
        conn.settimeout(DEADLINE_SECONDS)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk

    status_line, _, payload = _head_and_body(answer)
    assert status_line.startswith("HTTP/1.1 200")
    assert json.loads(payload)["choices"][0]["message"]["content"] == "hi"
