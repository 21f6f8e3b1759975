"""Chat completions: resolve the model, run the provider, shape the answer or the SSE stream,
and hand what the client asked to keep to the store."""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from pydantic import TypeAdapter

from chatbot_api import metrics
from chatbot_api.context import current_request
from chatbot_api.errors import (
    ChatbotAPIError,
    InvalidRequestError,
    ModelNotFoundError,
    internal_error,
)
from chatbot_api.providers.base import (
    Finish,
    GenerationEvent,
    GenerationRequest,
    Provider,
    Relay,
    RelayedStream,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from chatbot_api.providers.registry import ModelRegistry, ModelSpec
from chatbot_api.providers.wire import chunk_events, usage_of
from chatbot_api.schemas.chat import ChatCompletionRequest
from chatbot_api.schemas.completions import ChatCompletionChunk, ChunkChoice, CompletionUsage, Delta
from chatbot_api.schemas.messages import ChatMessage
from chatbot_api.security.auth import Principal
from chatbot_api.services.assembly import Assembly, wire_logprobs
from chatbot_api.services.fanout import fan_out
from chatbot_api.services.requests import (
    build_generation_request,
    check_supported,
    check_tool_turns,
)
from chatbot_api.store.completions import CompletionStore
from chatbot_api.store.writer import CompletionRecord, QueuePlace

__all__ = ["ChatService", "ChatStream", "Completion", "PreparedChat"]

logger = logging.getLogger(__name__)

_MESSAGES: TypeAdapter[list[ChatMessage]] = TypeAdapter(list[ChatMessage])


@dataclass(frozen=True, slots=True)
class RelayCall:
    provider: Relay
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """A request that passed every check and is ready to run."""

    id: str
    created: int
    spec: ModelSpec
    provider: Provider
    request: ChatCompletionRequest
    generations: tuple[GenerationRequest, ...]
    n: int
    store: bool
    #: Whose stored completions this one joins (``Principal.owner``).
    owner: str
    #: The request's id, kept with a stored completion.
    request_id: str | None
    #: Tokens the rate limiter holds back until real usage is known.
    reserved_tokens: int
    #: ``time.perf_counter()`` when the request was prepared, for time to first token.
    started: float
    #: The client's JSON body and the provider that relays it (None: events are built).
    relay: RelayCall | None = None

    @property
    def include_usage(self) -> bool:
        options = self.request.stream_options
        return bool(options and options.include_usage)

    def assembly(self) -> Assembly:
        return Assembly(self.n, logprobs=bool(self.request.logprobs))


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished ``chat.completion``: its JSON text and what it used."""

    body: str | bytes
    usage: CompletionUsage
    #: Headers of the answer beyond the rate limits (which deployment served it).
    headers: dict[str, str] = field(default_factory=dict)


class ChatStream:
    """A streamed completion: its SSE payloads, and its usage once the provider reports it."""

    payloads: AsyncIterator[Any]

    def __init__(self) -> None:
        #: Filled in by the stream when the provider reports usage; None if it never did.
        self.usage: CompletionUsage | None = None
        #: Why the server ended it early (``services.stream_end``); None: it did not.
        self.ended: str | None = None
        #: Headers of the answer beyond the rate limits (which deployment serves it).
        self.headers: dict[str, str] = {}
        #: What else ``aclose`` ends: a relayed upstream call, which its payloads may not
        #: have begun to read.
        self.closing: Callable[[], Awaitable[None]] | None = None

    @property
    def used_tokens(self) -> int | None:
        return None if self.usage is None else self.usage.total_tokens

    def ending(self, error: ChatbotAPIError) -> list[Any]:
        """The last payloads of a stream the server ends early with ``error``."""
        return [error.to_body().model_dump_json(), "[DONE]"]

    async def aclose(self) -> None:
        """Stop the stream, and its generation, now (a no-op once it has ended). Its owner
        calls this: a wrapper of ``payloads`` closed at its ``yield`` leaves them open."""
        await _close(self.payloads)
        if self.closing is not None:
            await self.closing()


class ChatService:
    def __init__(
        self,
        registry: ModelRegistry,
        store: CompletionStore,
        *,
        store_by_default: bool = False,
        reserve_tokens: int = 1024,
    ) -> None:
        self._registry = registry
        self._store = store
        self._store_by_default = store_by_default
        self._reserve_tokens = reserve_tokens
        self._default_lengths: dict[str, int] = {}
        #: Per model, whether its provider relays: a runtime-checked Protocol costs each
        #: ``isinstance`` a look at every method, too much for each request.
        self._relays: dict[str, Relay | None] = {}

    def prepare(
        self,
        request: ChatCompletionRequest,
        principal: Principal,
        *,
        request_id: str | None = None,
        raw: bytes | None = None,
    ) -> PreparedChat:
        """Everything that can fail before a response starts fails here, as a proper status.

        ``raw`` is the request's body as it came, which a relaying provider forwards (the
        fields no model of ours reads included: an upstream may read them).
        """
        if not principal.may_use(request.model):
            raise ModelNotFoundError(request.model, param="model")
        model = self._registry.get(request.model, param="model")
        supported = model.provider.supported_parameters
        check_supported(request, model.spec.id, supported)
        check_tool_turns(request.messages)
        n = request.n or 1
        most = getattr(model.provider, "max_choices", None)
        if most is not None and n > most:
            raise InvalidRequestError(
                f"Invalid value for 'n': model '{model.spec.id}' can give at most {most} "
                "choices to one request.",
                param="n",
                code="invalid_value",
            )
        if n == 1 or "n" in supported:
            generations: tuple[GenerationRequest, ...] = (
                build_generation_request(request, request_id=request_id),
            )
        else:
            generations = tuple(
                build_generation_request(request, seed_offset=i, request_id=request_id)
                for i in range(n)
            )
        context = current_request()  # for the access log
        if context is not None:  # pragma: no branch - only a caller outside HTTP has none
            context.model = model.spec.id
            context.stream = bool(request.stream)
        store = self._store_by_default if request.store is None else request.store
        return PreparedChat(
            id=_completion_id(stored=store),
            created=int(time.time()),
            spec=model.spec,
            provider=model.provider,
            request=request,
            generations=generations,
            n=n,
            store=store,
            owner=principal.owner,
            request_id=request_id,
            reserved_tokens=self._reservation(model.spec, generations[0], n),
            started=time.perf_counter(),
            relay=RelayCall(relay, _relayed_body(raw))
            if raw and (relay := self._relay(model.spec.id, model.provider)) is not None
            else None,
        )

    def _relay(self, model_id: str, provider: Provider) -> Relay | None:
        """The model's provider when it relays, else None (decided once per model)."""
        if model_id not in self._relays:
            self._relays[model_id] = provider if isinstance(provider, Relay) else None
        return self._relays[model_id]

    def _reservation(self, spec: ModelSpec, generation: GenerationRequest, n: int) -> int:
        """The prompt's size estimated as OpenAI's limiter does (four characters a token),
        plus the most each choice may generate."""
        characters = sum(len(message.text) for message in generation.messages)
        most = generation.max_tokens or self._default_lengths.get(spec.id)
        if most is None:
            # The model's own default generation length, when its configuration has one.
            most = getattr(spec.config, "max_tokens", None) or self._reserve_tokens
            self._default_lengths[spec.id] = most
        return math.ceil(characters / 4) + n * most

    async def complete(self, chat: PreparedChat) -> Completion:
        """The ``chat.completion`` and its usage, queued for the store when asked.

        A completion to store takes its place in the store's queue before generating: with
        no room (the database away too long) it is refused with 503, not answered and lost.
        """
        if chat.relay is not None:
            return await self._relay_answer(chat, chat.relay)
        place = self._store.reserve() if chat.store else None
        try:
            assembly = chat.assembly()
            async for event in self.events(chat):
                assembly.add(event)
                if isinstance(event, Usage):
                    _record_usage(event)
            body = assembly.completion(chat.id, chat.created, chat.spec.id).model_dump_json()
            if place is not None:
                self._save(chat, body, assembly.usage, place)
            return Completion(body, assembly.usage)
        finally:
            if place is not None:
                place.release()  # a no-op once the record is queued

    async def open_stream(self, chat: PreparedChat) -> ChatStream:
        """Start generating and return the SSE payloads once the provider has answered.

        Waiting for the provider's first event before any byte is sent means that a refusal
        (every slot taken, a prompt too long for the context) still reaches the client as a
        proper status code, not as an error event inside a 200.
        """
        if chat.relay is not None:
            return await self._relay_stream(chat, chat.relay)
        place = self._store.reserve() if chat.store else None  # see complete()
        events = self.events(chat)
        try:
            first = await anext(aiter(events), None)
        except BaseException:
            await _close(events)
            if place is not None:
                place.release()
            raise
        stream = ChatStream()
        stream.payloads = self._stream(chat, first, events, stream, place)
        return stream

    def _stream(
        self,
        chat: PreparedChat,
        first: GenerationEvent | None,
        events: AsyncIterator[GenerationEvent],
        out: ChatStream,
        place: QueuePlace | None,
    ) -> AsyncIterator[str | bytes]:
        """The SSE ``data`` payloads of a streamed completion, ``[DONE]`` last: its chunks,
        built from the provider's events, and its ending (:func:`_ended`). A stream that
        completes is stored as assembled in its reserved ``place``."""
        return _ended(chat, out, self._chunks(chat, first, events, out, place), place, events)

    async def _chunks(
        self,
        chat: PreparedChat,
        first: GenerationEvent | None,
        events: AsyncIterator[GenerationEvent],
        out: ChatStream,
        place: QueuePlace | None,
    ) -> AsyncIterator[str]:
        exclude = None if chat.include_usage else {"usage"}

        def chunk(choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> str:
            return ChatCompletionChunk(
                id=chat.id, created=chat.created, model=chat.spec.id, choices=choices, usage=usage
            ).model_dump_json(exclude=exclude)

        assembly = chat.assembly() if place is not None else None
        for index in range(chat.n):
            yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        async for event in _prepend(first, events):
            if assembly is not None:
                assembly.add(event)
            if isinstance(event, TextDelta):
                choice = ChunkChoice(
                    index=event.index,
                    delta=Delta(content=event.text),
                    logprobs=wire_logprobs(event.logprobs) if event.logprobs else None,
                )
                yield chunk([choice])
            elif isinstance(event, ToolCallDelta):
                yield chunk([ChunkChoice(index=event.index, delta=Delta(tool_calls=[event.call]))])
            elif isinstance(event, Finish):
                yield chunk(
                    [ChunkChoice(index=event.index, delta=Delta(), finish_reason=event.reason)]
                )
            else:
                out.usage = usage = _record_usage(event)
                if chat.include_usage:
                    yield chunk([], usage)
        if assembly is not None and place is not None:
            body = assembly.completion(chat.id, chat.created, chat.spec.id).model_dump_json()
            self._save(chat, body, assembly.usage, place)

    async def _relay_answer(self, chat: PreparedChat, relay: RelayCall) -> Completion:
        """The upstream's ``chat.completion``, its bytes passed on unless its ``model`` (or,
        to be stored, its ``id``) must say ours."""
        place = self._store.reserve() if chat.store else None
        try:
            answer = await relay.provider.relay_answer(relay.body)
            _first_token(chat)
            document = answer.document
            usage = _account(chat, usage_of(document))
            body: str | bytes = answer.body
            if document.get("model") != answer.model or place is not None:
                document["model"] = answer.model
                if place is not None:
                    document["id"] = chat.id
                body = _encode(document)
            if place is not None:
                self._save(chat, body.decode() if isinstance(body, bytes) else body, usage, place)
            return Completion(body, usage, {_DEPLOYMENT_HEADER: answer.deployment})
        finally:
            if place is not None:
                place.release()  # a no-op once the record is queued

    async def _relay_stream(self, chat: PreparedChat, relay: RelayCall) -> ChatStream:
        place = self._store.reserve() if chat.store else None
        try:
            relayed = await relay.provider.relay_stream(relay.body)
        except BaseException:
            if place is not None:
                place.release()
            raise
        _first_token(chat)
        stream = ChatStream()
        stream.headers = {_DEPLOYMENT_HEADER: relayed.deployment}
        stream.closing = relayed.aclose
        stream.payloads = self._relayed_payloads(chat, relayed, stream, place)
        return stream

    def _relayed_payloads(
        self, chat: PreparedChat, relayed: RelayedStream, out: ChatStream, place: QueuePlace | None
    ) -> AsyncIterator[str | bytes]:
        """The upstream's chunks as they came, but for what must change: ``model`` says ours,
        a stored stream's ``id`` is the stored completion's, usage the client did not ask for
        is left out. Errors and endings as :meth:`_stream`'s."""
        chunks = self._relayed_chunks(chat, relayed, out, place)
        return _ended(chat, out, chunks, place, relayed.chunks, relayed.aclose)

    async def _relayed_chunks(
        self, chat: PreparedChat, relayed: RelayedStream, out: ChatStream, place: QueuePlace | None
    ) -> AsyncIterator[str]:
        assembly = chat.assembly() if place is not None else None
        include_usage = chat.include_usage
        async for payload, document in relayed.chunks:
            change = place is not None or document.get("model") != relayed.model
            if assembly is not None:
                for event in chunk_events(document):
                    if not isinstance(event, TextDelta | ToolCallDelta | Finish) or (
                        event.index < chat.n
                    ):
                        assembly.add(event)
            usage = usage_of(document)
            if usage is not None:
                out.usage = _account(chat, usage)
                if not include_usage:
                    if not document.get("choices"):
                        continue
                    document["usage"] = None
                    change = True
            if change:
                document["model"] = relayed.model
                if place is not None:
                    document["id"] = chat.id
                yield _encode(document).decode()
            else:
                yield payload.decode()
        if assembly is not None and place is not None:
            body = assembly.completion(chat.id, chat.created, relayed.model).model_dump_json()
            self._save(chat, body, assembly.usage, place)

    def events(self, chat: PreparedChat) -> AsyncIterator[GenerationEvent]:
        """The provider's events for ``chat`` (its choices fanned out when the provider runs
        one at a time), measured for the metrics."""
        if len(chat.generations) == 1:
            events = chat.provider.generate(chat.generations[0])
        else:
            events = fan_out(chat.provider, chat.generations)
        return _measured(chat, events)

    def _save(
        self, chat: PreparedChat, body: str, usage: CompletionUsage, place: QueuePlace
    ) -> None:
        messages = _MESSAGES.dump_json(chat.request.messages, exclude_none=True).decode()
        self._store.save(
            CompletionRecord(
                id=chat.id,
                owner=chat.owner,
                model=chat.spec.id,
                created=chat.created,
                request_id=chat.request_id,
                messages_json=messages,
                response_json=body,
                metadata_=chat.request.metadata or {},
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
            ),
            place,
        )


#: The response header that names the deployment of a relayed answer.
_DEPLOYMENT_HEADER = "x-chatbot-deployment"
_encode = msgspec.json.encode
_BOM = b"\xef\xbb\xbf"


def _relayed_body(raw: bytes) -> dict[str, Any]:
    """The client's body as a relaying provider gets it. ``raw`` passed the strict reading
    (``api.json_body``) and validation already, so it is one JSON object."""
    document = msgspec.json.decode(raw.removeprefix(_BOM))
    assert isinstance(document, dict)
    return document


def _first_token(chat: PreparedChat) -> None:
    metrics.TIME_TO_FIRST_TOKEN.labels(chat.spec.id).observe(time.perf_counter() - chat.started)


def _account(chat: PreparedChat, usage: Usage | None) -> CompletionUsage:
    """Count a relayed answer's usage (none reported: nothing is guessed) as ``_measured``
    counts a provider's, and return it as the wire's."""
    if usage is None:
        usage = Usage(0, 0)
    model = chat.spec.id
    metrics.PROMPT_TOKENS.labels(model).inc(usage.prompt_tokens)
    metrics.GENERATED_TOKENS.labels(model).inc(usage.completion_tokens)
    context = current_request()
    if context is not None:  # pragma: no branch - only a caller outside HTTP has none
        context.prompt_tokens = usage.prompt_tokens
        context.completion_tokens = usage.completion_tokens
    return _record_usage(usage)


def _completion_id(*, stored: bool) -> str:
    """``chatcmpl-`` and 32 hex digits that sort by time (milliseconds first, then random):
    stored rows then land at the end of the id index instead of at random places in it.

    The id of a stored completion names it in the API, so its random part comes from the
    system's secure source; any other's only tells it apart, and Python's generator (no
    system call, 2% of an ``echo`` request's time) does."""
    tail = secrets.token_hex(10) if stored else f"{random.getrandbits(80):020x}"
    return f"chatcmpl-{time.time_ns() // 1_000_000:012x}{tail}"


async def _ended(
    chat: PreparedChat,
    out: ChatStream,
    chunks: AsyncIterator[str],
    place: QueuePlace | None,
    source: AsyncIterator[Any],
    close: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[str | bytes]:
    """``chunks``, then ``[DONE]``. An error part-way becomes an error event; a stream closed
    from outside (the client left, the server's deadline or shutdown) is logged and raises on.
    However it ends, the store's ``place`` is given back (a no-op once the record is queued)
    and the generation stops: ``chunks`` and its ``source`` are closed, then ``close`` runs."""
    sent = 0
    metrics.ACTIVE_STREAMS.inc()
    try:
        async for chunk in chunks:
            sent += 1
            yield chunk
    except ChatbotAPIError as exc:
        logger.warning("stream failed: %s", exc.message, extra={"code": exc.code})
        yield exc.to_body().model_dump_json()
    except Exception:
        logger.exception("stream failed unexpectedly")
        yield internal_error(chat.request_id).to_body().model_dump_json()
    except BaseException:
        logger.info(
            "%s; generation stopped",
            out.ended or "client disconnected",
            extra={"model": chat.spec.id, "pieces_sent": sent},
        )
        raise
    finally:
        metrics.ACTIVE_STREAMS.dec()
        if place is not None:
            place.release()
        await _close(chunks)
        await _close(source)
        if close is not None:
            await close()
    yield "[DONE]"


async def _prepend(
    first: GenerationEvent | None, rest: AsyncIterator[GenerationEvent]
) -> AsyncIterator[GenerationEvent]:
    if first is not None:
        yield first
        async for event in rest:
            yield event


async def _close(events: AsyncIterator[object]) -> None:
    """Close a generator now, so its ``finally`` (cancelling work) runs at once."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


async def _measured(
    chat: PreparedChat, events: AsyncIterator[GenerationEvent]
) -> AsyncIterator[GenerationEvent]:
    """The provider's events, passed on while time to first token and tokens are counted."""
    model = chat.spec.id
    waiting_for_text = True
    try:
        async for event in events:
            if waiting_for_text and isinstance(event, TextDelta | ToolCallDelta):
                waiting_for_text = False
                metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(
                    time.perf_counter() - chat.started
                )
            elif isinstance(event, Usage):
                metrics.PROMPT_TOKENS.labels(model).inc(event.prompt_tokens)
                metrics.GENERATED_TOKENS.labels(model).inc(event.completion_tokens)
                context = current_request()  # for the access log
                if context is not None:  # pragma: no branch - only a caller outside HTTP has none
                    context.prompt_tokens = event.prompt_tokens
                    context.completion_tokens = event.completion_tokens
            yield event
    finally:
        await _close(events)


def _record_usage(event: Usage) -> CompletionUsage:
    """The wire usage of ``event`` (``events`` told the access log already)."""
    return CompletionUsage.of(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
