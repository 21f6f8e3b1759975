"""Validate JSON against the official OpenAI spec (``shared/openai/openapi.yaml``).

The schemas we answer with are kept in ``tests/openai_schemas.json``, cut from the official
spec by :func:`extract` (``python -m tests.spec`` refreshes it), so that ``make test`` also
works from a clone without ``shared/``. When the shared spec is present, a test checks that
the copy is current.

The spec is OpenAPI 3.1 but still marks nullable values with 3.0's ``nullable: true``, which a
JSON Schema 2020-12 validator ignores; each such node becomes ``anyOf: [node, null]``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "openai" / "openapi.yaml"
VENDORED = Path(__file__).with_name("openai_schemas.json")
ROOTS = (
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "ChatCompletionList",
    "ChatCompletionMessageList",
    "ChatCompletionDeleted",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
    "TokenCountsResource",
    "ConversationResource",
    "ConversationItem",
    "ConversationItemList",
    "DeletedConversationResource",
)
_URI = "urn:openai-spec"
_PREFIX = "#/components/schemas/"


def load_spec(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        document: dict[str, Any] = yaml.load(
            handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    return document


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(_PREFIX)} if "$ref" in node else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def extract(document: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    """The named component schemas and everything they reference, as a small document."""
    schemas = document["components"]["schemas"]
    wanted: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted[name] = schemas[name]
            pending.extend(_refs(schemas[name]) - set(wanted))
    return {"components": {"schemas": dict(sorted(wanted.items()))}}


def _with_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        converted = {k: _with_nulls(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True:
            return {"anyOf": [converted, {"type": "null"}]}
        return converted
    if isinstance(node, list):
        return [_with_nulls(item) for item in node]
    return node


@cache
def _registry() -> Registry[Any]:
    document = json.loads(VENDORED.read_text())
    resource: Resource[Any] = Resource.from_contents(
        _with_nulls(document), default_specification=DRAFT202012
    )
    registry: Registry[Any] = Registry().with_resource(_URI, resource)
    return registry


def validate(schema_name: str, instance: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` is a valid ``schema_name``."""
    schema = {"$ref": f"{_URI}{_PREFIX}{schema_name}"}
    Draft202012Validator(schema, registry=_registry()).validate(instance)


if __name__ == "__main__":
    extracted = extract(load_spec(SHARED_SPEC))
    VENDORED.write_text(json.dumps(extracted, indent=1, sort_keys=True, default=str) + "\n")
    print(f"wrote {len(extracted['components']['schemas'])} schemas to {VENDORED}")
