"""The Responses API: a ``CreateResponse`` becomes a chat generation on the chosen model, its
events become a ``response`` (or its typed SSE events), and the turn is stored.

A request reads its context from the store first (the chain behind ``previous_response_id``,
or the items of its ``conversation``), adds its own input and hands the whole to the chat
service, which checks what the model can honour. Parameters are translated, not dropped: one
the model cannot honour is refused with a 400 naming it in the Responses API's terms.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from chatbot_api.errors import (
    ChatbotAPIError,
    ContextLengthExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
    internal_error,
)
from chatbot_api.ids import new_id
from chatbot_api.providers.base import GenerationEvent, Usage
from chatbot_api.schemas.chat import ChatCompletionRequest
from chatbot_api.schemas.completions import CompletionUsage
from chatbot_api.schemas.responses import (
    CreateResponseRequest,
    FunctionTool,
    InputMessage,
    InputTokensRequest,
    ItemReference,
)
from chatbot_api.security.auth import Principal
from chatbot_api.services.chat import ChatService, ChatStream, PreparedChat
from chatbot_api.services.response_events import Event, ResponseBuilder
from chatbot_api.services.response_items import (
    check_function_outputs,
    context_messages,
    stored_items,
)
from chatbot_api.store.conversations import ConversationStore
from chatbot_api.store.responses import ResponseRecord, ResponseStore

__all__ = ["PreparedResponse", "ResponseService", "ResponseStream", "close_events"]

logger = logging.getLogger(__name__)

Item = dict[str, Any]

#: ``include`` values we can honour; the others name outputs of tools we do not run.
_INCLUDABLE = frozenset({"message.output_text.logprobs"})

#: Chat parameter names as the Responses API spells them, for the errors clients read.
_CHAT_TOOL_FIELD = re.compile(r"^(tools\[\d+\])\.function\.")
_PARAMS = {
    "response_format": "text.format",
    "verbosity": "text.verbosity",
    "reasoning_effort": "reasoning.effort",
    "logprobs": "include",
    "max_completion_tokens": "max_output_tokens",
    "messages": "input",
}


@dataclass(frozen=True, slots=True)
class PreparedResponse:
    id: str
    created_at: int
    request: CreateResponseRequest
    chat: PreparedChat
    owner: str
    store: bool
    conversation_id: str | None
    #: This turn's input, as stored and listed.
    input_items: list[Item]
    #: The stored items before it (earlier turns), oldest first.
    context: list[Item]
    principal: Principal
    #: The response object's fields that do not change while it is generated.
    base: dict[str, Any]
    request_id: str | None

    def builder(self) -> ResponseBuilder:
        return ResponseBuilder(self.base)

    @property
    def keeps_anything(self) -> bool:
        return self.store or self.conversation_id is not None


class ResponseStream(ChatStream):
    """A streamed response: typed SSE events; a server-side end is ``response.failed``."""

    def __init__(self, builder: ResponseBuilder) -> None:
        super().__init__()
        self.builder = builder

    def ending(self, error: ChatbotAPIError) -> list[Any]:
        return [sse(event) for event in self.builder.fail(error)]


def sse(event: Event) -> dict[str, str]:
    """An event as sse-starlette sends it: ``event:`` its type, ``data:`` its JSON."""
    return {"event": event["type"], "data": json.dumps(event, separators=(",", ":"))}


def _renamed(exc: ChatbotAPIError) -> ChatbotAPIError:
    """``exc`` with the chat parameter it names spelled as the Responses API does."""
    param = exc.param
    if param is None:
        return exc
    # A chat tool nests its function under "function"; a Responses tool is the function.
    flat = _CHAT_TOOL_FIELD.sub(r"\1.", param)
    if flat != param:
        exc.param = flat
        return exc
    name = param.partition(".")[0].split("[", 1)[0]
    if name not in _PARAMS:
        return exc
    ours = _PARAMS[name]
    exc.message = exc.message.replace(f"'{name}'", f"'{ours}'")
    exc.param = ours
    return exc


class ResponseService:
    def __init__(
        self,
        chat: ChatService,
        responses: ResponseStore,
        conversations: ConversationStore,
        *,
        max_context_chars: int = 8_000_000,
    ) -> None:
        self._chat = chat
        self._max_context_chars = max_context_chars
        self.responses = responses
        self.conversations = conversations

    async def prepare(
        self,
        request: CreateResponseRequest,
        principal: Principal,
        *,
        request_id: str | None = None,
    ) -> PreparedResponse:
        """Every check that can fail before generating, with the context read."""
        store = True if request.store is None else request.store
        _check(request, store)
        chat_fields, tools = _chat_fields(request)
        input_items, context, truncated = await self._context(request, principal)
        if not truncated:  # else a result's call may be among the items left out
            check_function_outputs(context, input_items)
        messages = context_messages(request.instructions, [*context, *input_items])
        if not messages and not (context or input_items):
            raise InvalidRequestError(
                "Missing required parameter: 'input'.",
                param="input",
                code="missing_required_parameter",
            )
        if not messages:
            raise InvalidRequestError(
                "Invalid 'input': it holds nothing for the model to read (function calls "
                "without their outputs, reasoning).",
                param="input",
                code="invalid_value",
            )
        try:
            chat_request = ChatCompletionRequest.model_validate(
                {"model": request.model, "messages": messages, **chat_fields}
            )
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise InvalidRequestError(
                f"Invalid input: {problem['msg']}.", param="input", code="invalid_value"
            ) from None
        try:
            chat = self._chat.prepare(chat_request, principal, request_id=request_id)
        except ChatbotAPIError as exc:
            raise _renamed(exc) from None
        response_id = new_id("resp")
        created_at = int(time.time())
        conversation_id = request.conversation_id
        base = {
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "model": chat.spec.id,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "metadata": request.metadata or {},
            "parallel_tool_calls": (
                True if request.parallel_tool_calls is None else request.parallel_tool_calls
            ),
            "previous_response_id": request.previous_response_id,
            "conversation": {"id": conversation_id} if conversation_id else None,
            "background": bool(request.background),
            "store": store,
            "temperature": request.temperature if request.temperature is not None else 1.0,
            "top_p": request.top_p if request.top_p is not None else 1.0,
            "top_logprobs": request.top_logprobs or 0,
            "text": {"format": (request.text and request.text.format) or {"type": "text"}},
            "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
            "tools": tools,
            "truncation": request.truncation or "disabled",
            "safety_identifier": request.safety_identifier,
            "service_tier": "default",
            "reasoning": {"effort": None, "summary": None},
        }
        if request.user is not None:
            base["user"] = request.user
        return PreparedResponse(
            id=response_id,
            created_at=created_at,
            request=request,
            chat=chat,
            owner=principal.owner,
            store=store,
            conversation_id=conversation_id,
            input_items=input_items,
            context=context,
            principal=principal,
            base=base,
            request_id=request_id,
        )

    async def _context(
        self, request: CreateResponseRequest, principal: Principal
    ) -> tuple[list[Item], list[Item], bool]:
        """This turn's input items, the stored items before them, and whether some of those
        were left out (``truncation: auto``)."""
        raw = request.input
        if raw is None:
            given: list[Any] = []
        elif isinstance(raw, str):
            given = [InputMessage(role="user", content=raw)]
        else:
            given = list(raw)
        input_items = await self._items(principal.owner, given, "input")
        context: list[Item] = []
        dropped = 0
        most = self._max_context_chars
        if request.previous_response_id is not None:
            found = await self.responses.context(
                principal.owner, request.previous_response_id, max_chars=most
            )
            context, dropped = found.items, found.dropped
        elif request.conversation_id is not None:
            context, dropped = await self.conversations.items(
                principal.owner, request.conversation_id, max_chars=most
            )
        if dropped and request.truncation != "auto":
            raise ContextLengthExceededError(
                f"The stored context this response continues is larger than a turn may read "
                f"({most} characters of items, CHATBOT_MAX_CONTEXT_CHARS): its {dropped} "
                "oldest items do not fit. Send 'truncation': 'auto' to leave them out.",
                param="previous_response_id"
                if request.previous_response_id is not None
                else "conversation",
            )
        return input_items, context, dropped > 0

    async def _items(self, owner: str, given: Sequence[Any], param: str) -> list[Item]:
        """Input items as stored, the ``item_reference`` entries among them looked up."""
        wanted = [item.id for item in given if isinstance(item, ItemReference)]
        references = await self.responses.referenced(owner, wanted)
        for i, item in enumerate(given):
            if isinstance(item, ItemReference) and item.id not in references:
                raise InvalidRequestError(
                    f"Item with id '{item.id}' not found.", param=f"{param}[{i}].id"
                )
        return stored_items(given, references)

    async def create_conversation(
        self, owner: str, metadata: dict[str, str], items: Sequence[Any]
    ) -> dict[str, Any]:
        stored = await self._items(owner, items, "items")
        return await self.conversations.create(owner, new_id("conv"), metadata, stored)

    async def add_conversation_items(
        self, owner: str, conversation_id: str, items: Sequence[Any]
    ) -> dict[str, Any]:
        stored = await self._items(owner, items, "items")
        return await self.conversations.add_items(owner, conversation_id, stored)

    async def count_input_tokens(self, body: InputTokensRequest, principal: Principal) -> int:
        """The tokens a response to ``body`` would read: the provider's own count where it
        can give one, else OpenAI's estimate of four characters a token."""
        # The fields they share, already validated; the rest keep their defaults.
        request = CreateResponseRequest.model_construct(
            **{name: getattr(body, name) for name in type(body).model_fields}
        )
        prepared = await self.prepare(request, principal)
        generation = prepared.chat.generations[0]
        count = getattr(prepared.chat.provider, "count_tokens", None)
        if count is not None:
            try:
                counted: int = await count(generation)
            except ChatbotAPIError as exc:
                raise _renamed(exc) from None
            return counted
        characters = sum(len(m.text) for m in generation.messages)
        return -(-characters // 4)

    async def begin(
        self, prepared: PreparedResponse
    ) -> tuple[GenerationEvent | None, AsyncIterator[GenerationEvent]]:
        """The generation's first event and the rest, once the model has taken the request.

        With ``truncation: auto``, a context the model cannot hold loses its oldest items (1,
        then 2, 4... more each time, so a long chain needs few tries) until it fits; only the
        input of this turn is never dropped.
        """
        dropped = 0
        chat = prepared.chat
        while True:
            events = self._chat.events(chat)
            try:
                return await anext(aiter(events), None), events
            except ChatbotAPIError as exc:
                await close_events(events)
                too_long = exc.code == "context_length_exceeded"
                if not too_long or prepared.request.truncation != "auto":
                    raise _renamed(exc) from None
                if dropped >= len(prepared.context):
                    raise _renamed(exc) from None
                dropped = min(len(prepared.context), max(1, dropped * 2))
                chat = self._shortened(prepared, dropped)
                logger.info("context truncated", extra={"dropped_items": dropped})
            except BaseException:
                await close_events(events)
                raise

    def _shortened(self, prepared: PreparedResponse, dropped: int) -> PreparedChat:
        """The chat request with the oldest ``dropped`` context items left out."""
        kept = prepared.context[dropped:]
        messages = context_messages(prepared.request.instructions, [*kept, *prepared.input_items])
        request = prepared.chat.request.model_copy(
            update={
                "messages": ChatCompletionRequest.model_validate(
                    {"model": prepared.chat.spec.id, "messages": messages}
                ).messages
            }
        )
        return self._chat.prepare(request, prepared.principal, request_id=prepared.request_id)

    async def complete(self, prepared: PreparedResponse) -> ResponseBuilder:
        """Generate the whole response, then store it (before the client has it)."""
        builder = prepared.builder()
        first, events = await self.begin(prepared)
        try:
            if first is not None:
                builder.add(first)
                async for event in events:
                    builder.add(event)
        finally:
            await close_events(events)
        builder.finish()
        await self.save(prepared, builder)
        return builder

    async def save(self, prepared: PreparedResponse, builder: ResponseBuilder) -> None:
        """Store the turn as ``store`` and ``conversation`` ask."""
        if not prepared.keeps_anything:
            return
        record = (
            ResponseRecord(
                id=prepared.id,
                owner=prepared.owner,
                model=prepared.chat.spec.id,
                created_at=prepared.created_at,
                status=builder.status,
                background=False,
                previous_response_id=prepared.request.previous_response_id,
                conversation_id=prepared.conversation_id,
                request_id=prepared.request_id,
                body=builder.response(),
                input_tokens=builder.input_tokens,
                output_tokens=builder.output_tokens,
            )
            if prepared.store
            else None
        )
        await self.responses.save(
            record,
            prepared.input_items,
            builder.output,
            owner=prepared.owner,
            conversation_id=prepared.conversation_id,
        )

    async def open_stream(self, prepared: PreparedResponse) -> ResponseStream:
        """Start generating; return the SSE events once the model has answered (so that a
        refusal is still a status code)."""
        first, events = await self.begin(prepared)
        builder = prepared.builder()
        stream = ResponseStream(builder)
        stream.payloads = self._stream(prepared, builder, first, events, stream)
        return stream

    async def _stream(
        self,
        prepared: PreparedResponse,
        builder: ResponseBuilder,
        first: GenerationEvent | None,
        events: AsyncIterator[GenerationEvent],
        out: ResponseStream,
    ) -> AsyncIterator[Any]:
        try:
            for event in builder.start():
                yield sse(event)
            if first is not None:
                for event in builder.add(first):
                    yield sse(event)
                async for generated in events:
                    for event in builder.add(generated):
                        yield sse(event)
                    if isinstance(generated, Usage):
                        out.usage = _usage(builder)
            final = builder.finish()
            # Stored before the client reads the end: it can continue from it at once.
            await self.save(prepared, builder)
            for event in final:
                yield sse(event)
        except ChatbotAPIError as exc:
            logger.warning("response stream failed: %s", exc.message, extra={"code": exc.code})
            for event in builder.fail(exc):
                yield sse(event)
        except Exception:
            logger.exception("response stream failed unexpectedly")
            for event in builder.fail(internal_error(prepared.request_id)):
                yield sse(event)
        except BaseException:
            logger.info(
                "%s; generation stopped",
                out.ended or "client disconnected",
                extra={"model": prepared.chat.spec.id},
            )
            raise
        finally:
            await close_events(events)


def _usage(builder: ResponseBuilder) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=builder.input_tokens,
        completion_tokens=builder.output_tokens,
        total_tokens=builder.input_tokens + builder.output_tokens,
    )


async def close_events(events: AsyncIterator[object]) -> None:
    """Close a generator now, so its ``finally`` (cancelling work) runs at once."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def _check(request: CreateResponseRequest, store: bool) -> None:
    """Combinations and fields this server refuses, each with its reason."""
    if request.previous_response_id is not None and request.conversation is not None:
        raise InvalidRequestError(
            "'previous_response_id' and 'conversation' cannot be used together.",
            param="conversation",
            code="invalid_value",
        )
    if request.background and not store:
        raise InvalidRequestError(
            "A background response must be stored: 'background': true needs 'store': true.",
            param="background",
            code="invalid_value",
        )
    if request.background and request.stream:
        raise UnsupportedParameterError(
            "Unsupported parameter: 'stream' with 'background': true. Create the response in "
            "the background and read it with GET, or stream it in the foreground.",
            param="stream",
        )
    if request.prompt is not None:
        raise UnsupportedParameterError(
            "Unsupported parameter: 'prompt'. This server keeps no prompt templates; send "
            "'instructions' and 'input' instead.",
            param="prompt",
        )
    for i, name in enumerate(request.include or ()):
        if name not in _INCLUDABLE:
            raise UnsupportedParameterError(
                f"Unsupported value: '{name}' in 'include'. This server runs no built-in "
                "tools; only 'message.output_text.logprobs' can be included.",
                param=f"include[{i}]",
            )
    reasoning = request.reasoning
    if reasoning is not None and (reasoning.summary or reasoning.generate_summary):
        raise UnsupportedParameterError(
            "Unsupported parameter: 'reasoning.summary'. The models served here do not "
            "summarise their reasoning.",
            param="reasoning.summary",
        )


def _chat_fields(request: CreateResponseRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chat request's fields for this response's parameters, and its tools as the
    response object lists them."""
    fields: dict[str, Any] = {
        "store": False,  # the turn is stored as a response, not as a chat completion
        "stream": bool(request.stream),  # an upstream then streams to us as we do
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user,
        "metadata": None,
        "parallel_tool_calls": request.parallel_tool_calls,
    }
    tools: list[dict[str, Any]] = []
    for i, raw in enumerate(request.tools or ()):
        if raw.get("type") != "function":
            raise UnsupportedParameterError(
                f"Unsupported tool type: '{raw.get('type')}'. This server runs no built-in "
                "tools; only 'function' tools can be given.",
                param=f"tools[{i}].type",
            )
        try:
            tool = FunctionTool.model_validate(raw)
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise InvalidRequestError(
                f"Invalid tool: {problem['msg']}.",
                param=f"tools[{i}].{where}",
                code="invalid_value",
            ) from None
        tools.append(
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": tool.strict,
            }
        )
    if tools:
        fields["tools"] = [
            {
                "type": "function",
                "function": {k: v for k, v in tool.items() if k != "type" and v is not None},
            }
            for tool in tools
        ]
    choice = request.tool_choice
    if choice is not None:
        fields["tool_choice"] = _chat_tool_choice(choice)
    if request.text is not None:
        if request.text.format is not None:
            fields["response_format"] = _chat_format(request.text.format)
        fields["verbosity"] = request.text.verbosity
    if request.reasoning is not None and request.reasoning.effort not in (None, "none"):
        fields["reasoning_effort"] = request.reasoning.effort
    if request.include and "message.output_text.logprobs" in request.include:
        fields["logprobs"] = True
        if request.top_logprobs:
            fields["top_logprobs"] = request.top_logprobs
    elif request.top_logprobs:
        raise InvalidRequestError(
            "'top_logprobs' needs 'include': ['message.output_text.logprobs'].",
            param="top_logprobs",
            code="invalid_value",
        )
    return {k: v for k, v in fields.items() if v is not None}, tools


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice in ("none", "auto", "required"):
            return choice
    elif choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise UnsupportedParameterError(
        "Unsupported 'tool_choice': use 'none', 'auto', 'required' or "
        "{'type': 'function', 'name': ...}.",
        param="tool_choice",
    )


def _chat_format(text_format: dict[str, Any]) -> dict[str, Any]:
    kind = text_format.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        if not isinstance(text_format.get("name"), str) or "schema" not in text_format:
            raise InvalidRequestError(
                "A 'json_schema' format needs a 'name' and a 'schema'.",
                param="text.format",
                code="invalid_value",
            )
        inner = {
            k: text_format[k]
            for k in ("name", "schema", "strict", "description")
            if k in text_format
        }
        return {"type": "json_schema", "json_schema": inner}
    raise InvalidRequestError(
        f"Invalid value for 'text.format.type': '{kind}'. Use 'text', 'json_object' or "
        "'json_schema'.",
        param="text.format.type",
        code="invalid_value",
    )
