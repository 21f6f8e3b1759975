"""``n > 1`` for providers that generate one choice per call: run them at once, number them."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from chatbot_api.providers.base import (
    Finish,
    GenerationEvent,
    GenerationRequest,
    Provider,
    TextDelta,
    ToolCallDelta,
    Usage,
)

__all__ = ["fan_out"]

# Choices produced concurrently hand events over through a queue this deep, so a slow reader
# holds the producers back instead of letting events pile up.
_QUEUE = 64


async def fan_out(
    provider: Provider, generations: tuple[GenerationRequest, ...]
) -> AsyncIterator[GenerationEvent]:
    """Run one generation per choice at once; number their events; sum their usage."""
    queue: asyncio.Queue[tuple[int, GenerationEvent | BaseException | None]] = asyncio.Queue(_QUEUE)

    async def pump(index: int, generation: GenerationRequest) -> None:
        try:
            async for event in provider.generate(generation):
                await queue.put((index, event))
        except Exception as exc:
            await queue.put((index, exc))
        else:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    prompt_tokens = completion_tokens = 0
    cached: list[int] = []
    running = len(tasks)
    try:
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            elif isinstance(item, TextDelta | ToolCallDelta | Finish):
                yield dataclasses.replace(item, index=index)
            else:
                prompt_tokens = max(prompt_tokens, item.prompt_tokens)
                completion_tokens += item.completion_tokens
                if item.cached_tokens is not None:
                    cached.append(item.cached_tokens)
        # The prompt is counted once: cached is what every choice found in the cache.
        yield Usage(prompt_tokens, completion_tokens, min(cached) if cached else None)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
