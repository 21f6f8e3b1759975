"""LangChain runnables the models file of the LangChain tests names by import path."""

from __future__ import annotations

from collections.abc import AsyncIterator

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableGenerator

__all__ = ["capital_model", "shouting"]


async def _shout(inputs: AsyncIterator[list[BaseMessage]]) -> AsyncIterator[AIMessageChunk]:
    async for messages in inputs:
        last = str(messages[-1].content)
        for word in last.split():
            yield AIMessageChunk(content=word.upper() + " ")


#: A runnable of the user's own: shouts the last message back, word by word.
shouting = RunnableGenerator(_shout)

#: A LangChain chat model (LangChain's own fake one), streaming its answer in pieces.
capital_model = FakeListChatModel(responses=["Paris is the capital of France. Next question?"])
