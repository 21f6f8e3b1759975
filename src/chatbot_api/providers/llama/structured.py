"""Structured output, on the API worker's side: what a client's schema may be before the
engine compiles it, and how the engine's grammars write JSON.

This module is light on purpose: the worker imports it, and never llguidance or llama.cpp.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from chatbot_api.errors import InvalidRequestError
from chatbot_api.providers.llama.protocol import GrammarSpec

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # a TypedDict of the stubs only

__all__ = [
    "JSON_OPTIONS",
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "compact_schema",
    "grammar_spec",
    "schema_error",
]

#: Largest JSON schema accepted (as compact JSON): ``response_format``'s, and all of a
#: request's tools' together.
MAX_SCHEMA_BYTES = 1024 * 1024
#: Deepest nesting of objects and arrays a schema may have; llguidance refuses deeper ones.
MAX_SCHEMA_DEPTH = 100

#: How llguidance writes JSON unless a schema's own ``x-guidance`` says otherwise: no free
#: white space (small models otherwise fill the answer with newlines), readable separators.
JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False,
    "key_separator": ": ",
    "item_separator": ", ",
}


def schema_error(reason: str, param: str = "response_format") -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid schema for {param}: {reason}", param=param, code="invalid_json_schema"
    )


def _depth(value: object) -> int:
    """How deeply objects and arrays nest in ``value`` (without recursing)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_SCHEMA_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def compact_schema(schema: dict[str, Any], param: str = "response_format") -> str:
    """``schema`` as compact JSON with sorted keys (equal schemas then share one compiled
    grammar in the engine's cache), refused when it nests too deeply or is too large."""
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise schema_error(f"objects and arrays nest deeper than {MAX_SCHEMA_DEPTH} levels", param)
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_SCHEMA_BYTES:
        raise schema_error(f"the schema is larger than {MAX_SCHEMA_BYTES} bytes", param)
    return text


def grammar_spec(response_format: dict[str, Any] | None) -> GrammarSpec | None:
    """What the engine must hold the output to, checked as far as it can be without it."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", "")
    if kind != "json_schema":
        raise InvalidRequestError(
            f"Invalid value for 'response_format.type': {kind!r}; supported values are 'text', "
            "'json_object' and 'json_schema'.",
            param="response_format.type",
            code="invalid_value",
        )
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if schema is None:
        raise InvalidRequestError(
            "Missing required parameter: 'response_format.json_schema.schema'.",
            param="response_format.json_schema.schema",
            code="missing_required_parameter",
        )
    if not isinstance(schema, dict):
        raise schema_error("the schema must be a JSON object")
    return GrammarSpec("json_schema", compact_schema(schema))
