"""The query parameters of every paged list: ``after``, ``limit`` and ``order``, as OpenAI's."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query

__all__ = ["After", "Limit", "Order"]

After = Annotated[str | None, Query(description="The last id of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=100, description="How many to return (1 to 100).")]
Order = Annotated[Literal["asc", "desc"], Query(description="Oldest (`asc`) or newest first.")]
