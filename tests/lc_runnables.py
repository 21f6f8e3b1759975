"""LangChain runnables the models file of the LangChain tests names by import path."""

from __future__ import annotations

from collections.abc import AsyncIterator

from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    FakeMessagesListChatModel,
)
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableGenerator

__all__ = ["block_model", "capital_model", "shouting", "streaming_in_blocks"]


async def _shout(inputs: AsyncIterator[list[BaseMessage]]) -> AsyncIterator[AIMessageChunk]:
    async for messages in inputs:
        last = str(messages[-1].content)
        for word in last.split():
            yield AIMessageChunk(content=word.upper() + " ")


#: A runnable of the user's own: shouts the last message back, word by word.
shouting = RunnableGenerator(_shout)

#: A LangChain chat model (LangChain's own fake one), streaming its answer in pieces.
capital_model = FakeListChatModel(responses=["Paris is the capital of France. Next question?"])

#: A chat model answering, in one piece, with a list of content blocks and its own token
#: counts, as ChatAnthropic and LangChain's v1 output format answer (LangChain's own fake).
block_model = FakeMessagesListChatModel(
    responses=[
        AIMessage(
            content=[
                {"type": "text", "text": "Bonjour "},
                {"type": "reasoning", "reasoning": "French was asked for."},
                {"type": "text", "text": "Paris."},
            ],
            usage_metadata={"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
        )
    ]
)


async def _stream_in_blocks(
    inputs: AsyncIterator[list[BaseMessage]],
) -> AsyncIterator[AIMessageChunk]:
    async for _ in inputs:
        yield AIMessageChunk(
            content=[], usage_metadata={"input_tokens": 12, "output_tokens": 0, "total_tokens": 12}
        )
        for word in ("Bonjour ", "Paris."):
            yield AIMessageChunk(content=[{"type": "text", "text": word, "index": 0}])
        yield AIMessageChunk(
            content="", usage_metadata={"input_tokens": 0, "output_tokens": 5, "total_tokens": 5}
        )


#: Chunks as ChatAnthropic streams them: the prompt's tokens on an empty first chunk, the
#: text in content blocks, the answer's tokens on an empty last chunk.
streaming_in_blocks = RunnableGenerator(_stream_in_blocks)
