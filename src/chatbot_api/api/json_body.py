"""Reading JSON request bodies strictly, before FastAPI validates them.

Python's ``json`` accepts what no request should carry, each of which can fail later, as a
500 or in a backend: a lone UTF-16 surrogate (``"\\ud800"``), which no encoder can write out
again; a NUL character, which C code and PostgreSQL cut strings at; ``NaN``, ``Infinity`` and
numbers that overflow (``1e400`` becomes ``inf``; a 100-digit integer stays one); duplicate
keys, of which it silently keeps the last while a proxy in front may have judged the first;
nesting deeper than Pydantic can serialise. Each is a 400 here that names the field. A body of
a great many tiny values (200,000 ``{}`` in ``messages``) would hold the event loop for
seconds while Pydantic collects an error per item; past :data:`MAX_JSON_VALUES` it is refused
first.

The common body pays for one ``re`` search and two byte counts over its bytes and a hook call
per JSON object (the duplicate-key check). The tree is walked only when the search or a hook
found something, or when the body has enough brackets to nest too deep or enough bytes to hold
too many values.

Routers whose routes take a JSON body use :class:`JSONBodyRoute`; the hot path (chat
completions) is also served by :class:`~chatbot_api.api.fast.FastRoutes`, which reads the body
with :func:`read_json` too.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias

from fastapi import Request, Response
from fastapi.routing import APIRoute

from chatbot_api.api.error_handlers import BodyReadError
from chatbot_api.errors import ChatbotAPIError, InvalidRequestError

__all__ = ["MAX_JSON_DEPTH", "MAX_JSON_VALUES", "JSONBodyRequest", "JSONBodyRoute", "read_json"]

#: Most values (objects, arrays, strings, numbers, literals) one body may hold. A chat of 2,048
#: messages with tool calls, and 128 tools, holds about half of this.
MAX_JSON_VALUES = 50_000
#: Deepest nesting of arrays and objects: what Pydantic's own JSON parser allows. Pydantic
#: refuses to serialise past 255 levels, so a deeper tool schema or ``response_format`` would
#: fail on its way to an upstream provider (a 500); JSON schemas people write stay within a
#: few dozen.
MAX_JSON_DEPTH = 200

# What the stored text of a lone surrogate or a NUL must look like in the body: an escape
# (strict UTF-8 decoding refuses encoded surrogates, and JSON refuses raw control characters).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
# In a decoded string, a surrogate left over is a lone one: json joins each escaped pair.
_FORBIDDEN_CHARACTER = re.compile("[\x00\ud800-\udfff]")
# Integers must fit in 64 bits, signed or not; no 64-bit integer is written in more than 20
# characters, and past 4,300 digits int() itself refuses, so longer ones are not converted.
_INTEGER_MIN, _INTEGER_MAX, _INTEGER_CHARACTERS = -(2**63), 2**64 - 1, 20
_CONTAINER_TYPES = frozenset({dict, list})

_TOO_DEEP = f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep"
_TOO_MANY = (
    f"the request body holds more than {MAX_JSON_VALUES} JSON values (objects, arrays, "
    "strings, numbers), more than this server accepts"
)

#: Where a value sits: ``None`` for the body itself, else (its container's path, key or index).
_Path: TypeAlias = "tuple[_Path, str | int] | None"


class _Refused:
    """Put in place of a value the body may not hold, while parsing; the walk says where."""

    __slots__ = ("code", "key", "reason")

    def __init__(self, reason: str, *, code: str = "invalid_value", key: str | None = None) -> None:
        self.reason = reason
        self.code = code
        self.key = key  # a duplicated key: the param names it, not the object holding it


class _Hooks:
    """``json.loads`` hooks for one body; ``refused`` tells whether any value was replaced."""

    __slots__ = ("refused",)

    def __init__(self) -> None:
        self.refused = False

    def _refuse(self, refusal: _Refused) -> _Refused:
        self.refused = True
        return refusal

    def object_pairs(self, pairs: list[tuple[str, Any]]) -> Any:
        found = dict(pairs)
        if len(found) == len(pairs):
            return found
        counts = Counter(key for key, _ in pairs)
        twice = next(key for key, count in counts.items() if count > 1)
        return self._refuse(
            _Refused("the key appears twice in one object", code="invalid_json", key=twice)
        )

    def number(self, text: str) -> Any:
        value = float(text)
        if math.isinf(value):
            return self._refuse(_Refused(f"the number {text} is out of range"))
        return value

    def integer(self, text: str) -> Any:
        if len(text) <= _INTEGER_CHARACTERS:
            value = int(text)
            if _INTEGER_MIN <= value <= _INTEGER_MAX:
                return value
        shown = text if len(text) <= 30 else f"{text[:20]}... ({len(text)} characters)"
        return self._refuse(_Refused(f"the integer {shown} does not fit in 64 bits"))

    def constant(self, text: str) -> Any:
        return self._refuse(_Refused(f"{text} is not a JSON number"))


def read_json(body: bytes) -> Any:
    """The JSON document in ``body``, or :class:`InvalidRequestError` saying what is wrong.

    Malformed JSON raises ``json.JSONDecodeError`` as ``json.loads`` does, so that FastAPI
    reports it as it reports any unparsable body.
    """
    try:
        text = body.decode("utf-8-sig")  # a BOM may be ignored (RFC 8259); nothing else
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"The request body is not valid UTF-8 (at byte {exc.start}).", code="invalid_json"
        ) from None
    hooks = _Hooks()
    try:
        document = json.loads(
            text,
            object_pairs_hook=hooks.object_pairs,
            parse_float=hooks.number,
            parse_int=hooks.integer,
            parse_constant=hooks.constant,
        )
    except RecursionError:  # hundreds of levels past the limit: the parser itself gives up
        raise _invalid(None, _TOO_DEEP, "invalid_json") from None
    # Every value but the first takes a byte and a separator, so a shorter body cannot hold
    # too many; nor can it nest deeper than it has brackets. Only other bodies are walked,
    # and first, since passing bounds the work of the walk after.
    long = len(body) >= 2 * MAX_JSON_VALUES
    if (long or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH) and _over_limits(document):
        raise _shape_problem(document)
    if hooks.refused or _SUSPECT_ESCAPE.search(body):
        problem = _first_problem(document)
        if problem is not None:
            raise problem
    return document


def _first_problem(document: Any) -> InvalidRequestError | None:
    """The first value, in document order, that the body may not hold."""
    stack: list[tuple[_Path, Any]] = [(None, document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found = _FORBIDDEN_CHARACTER.search(value)
            if found is not None:
                return _bad_string(path, found.group())
        elif isinstance(value, dict):
            for key in value:
                found = _FORBIDDEN_CHARACTER.search(key)
                if found is not None:
                    return _bad_string((path, key), found.group(), what="key")
            stack.extend(((path, key), child) for key, child in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((path, index), value[index]) for index in range(len(value) - 1, -1, -1))
        elif isinstance(value, _Refused):
            where = (path, value.key) if value.key is not None else path
            return _invalid(where, value.reason, value.code)
    return None


def _over_limits(document: Any) -> bool:
    """Whether the body nests too deep or holds too many values, level by level: several
    times faster than :func:`_shape_problem`, which then says where."""
    level = [document] if type(document) in _CONTAINER_TYPES else []
    counted = depth = 1
    while level:
        counted += sum(map(len, level))  # before looking inside: a level may hold millions
        if depth > MAX_JSON_DEPTH or counted > MAX_JSON_VALUES:
            return True
        level = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
            if type(child) in _CONTAINER_TYPES
        ]
        depth += 1
    return False


def _shape_problem(document: Any) -> InvalidRequestError:
    """Where a body that :func:`_over_limits` found nested too deep or holding too many values
    is so: the top-level field that nests too deep, or the container whose items pass the
    count. The two count alike, so this walk finds the problem before its stack runs out."""
    counted = 1
    stack: list[tuple[_Path, Any, int]] = [(None, document, 1)]
    while True:
        path, value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return _invalid(_outermost(path), _TOO_DEEP, "invalid_json")
        counted += len(value)
        if counted > MAX_JSON_VALUES:
            return _invalid(path, _TOO_MANY, "invalid_value")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend(
            ((path, key), child, depth + 1)
            for key, child in items
            if type(child) in _CONTAINER_TYPES
        )


def _outermost(path: _Path) -> _Path:
    """The top-level field a path starts at (a path hundreds of levels long is no help)."""
    while path is not None and path[0] is not None:
        path = path[0]
    return path


def _bad_string(path: _Path, character: str, *, what: str = "string") -> InvalidRequestError:
    if character == "\x00":
        reason = f"the {what} holds a NUL character (\\u0000), which this API does not accept"
    else:
        reason = (
            f"the {what} holds an unpaired UTF-16 surrogate ({_escaped(character)}); a character "
            "outside the Basic Multilingual Plane is written as a pair of escapes, or as UTF-8"
        )
    return _invalid(path, reason, "invalid_value")


def _invalid(path: _Path, reason: str, code: str) -> InvalidRequestError:
    param = _param(path)
    if param is None:
        return InvalidRequestError(f"Invalid request body: {reason}.", code=code)
    return InvalidRequestError(f"Invalid value for '{param}': {reason}.", param=param, code=code)


def _param(path: _Path) -> str | None:
    """OpenAI's spelling of a location, ``messages[0].content``, printable whatever the keys."""
    parts: list[str | int] = []
    while path is not None:
        path, part = path
        parts.append(part)
    text = ""
    for part in reversed(parts):
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = _FORBIDDEN_CHARACTER.sub(lambda found: _escaped(found.group()), part)
            text = f"{text}.{key}" if text else key
    return text or None


def _escaped(character: str) -> str:
    return f"\\u{ord(character):04x}"


class JSONBodyRequest(Request):
    """A request whose ``json()`` is :func:`read_json`, its refusals passed through FastAPI."""

    async def json(self) -> Any:
        try:
            return read_json(await self.body())  # FastAPI asks once per request
        except ChatbotAPIError as error:
            raise BodyReadError(error) from None


class JSONBodyRoute(APIRoute):
    """A route that reads its JSON body with :class:`JSONBodyRequest`.

    FastAPI parses the body inside its request handler with ``request.json()`` and offers no
    other hook; handing the handler our own request class is its documented way in.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_strictly(request: Request) -> Response:
            return await handle(JSONBodyRequest(request.scope, request.receive))

        return handle_strictly
