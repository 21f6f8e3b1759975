"""Ids of the objects we make: a prefix and 32 hex digits that sort by time."""

from __future__ import annotations

import secrets
import time
from typing import Any

__all__ = ["new_id", "renamed"]


def new_id(prefix: str) -> str:
    """``prefix_`` and 32 hex digits (milliseconds first, then random): rows inserted in
    order land at the end of an id index instead of at random places in it."""
    return f"{prefix}_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def renamed(items: list[dict[str, Any]], *, taken: set[str]) -> list[dict[str, Any]]:
    """``items`` with a new id for each whose id is in ``taken`` or earlier in the list, so
    that an id names one item of a listing (and a cursor ``after`` it is unambiguous)."""
    seen = set(taken)
    for item in items:
        if item["id"] in seen:
            prefix = item["id"].split("_", 1)[0] if "_" in item["id"] else "item"
            item["id"] = new_id(prefix)
        seen.add(item["id"])
    return items
