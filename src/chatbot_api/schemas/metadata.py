"""OpenAI's ``metadata``: string pairs attached to an object, within OpenAI's limits."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

__all__ = ["Metadata"]

#: 16 pairs at most, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ],
    Field(
        max_length=16,
        description="Up to 16 key-value pairs; keys up to 64 characters, values up to 512.",
        examples=[{"topic": "billing"}],
    ),
]
