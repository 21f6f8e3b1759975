"""The ``llama_cpp`` provider, on the API worker's side: a request in, the engine's events out.

The model itself runs in an engine process of its own (``server``), started and restarted by a
supervisor (``supervisor``): the one ``chatbot-api serve`` runs for every worker, or this
provider's own when the app was started another way. Here the request is checked against what
the engine told us about the model, rendered into a prompt, and sent; the engine tokenises,
compiles the grammar, decodes and answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from jinja2 import TemplateError

from chatbot_api.config import Settings
from chatbot_api.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    UnsupportedParameterError,
)
from chatbot_api.logs import log_format_of
from chatbot_api.providers.base import (
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.client import EngineClient
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.prompt import TemplatePrompter, TranscriptPrompter
from chatbot_api.providers.llama.protocol import (
    Finished,
    Generate,
    GrammarSpec,
    Hello,
    Sampling,
    TokenLogprobWire,
)
from chatbot_api.providers.llama.structured import grammar_spec
from chatbot_api.providers.llama.supervisor import (
    EngineLogging,
    EngineSupervisor,
    engine_log_file,
    engine_socket,
)
from chatbot_api.providers.llama.tools import (
    ToolCallReader,
    ToolPlan,
    plan_tools,
    prompt_messages,
    template_tools,
)

__all__ = ["LlamaCppProvider"]

logger = logging.getLogger(__name__)

#: How long a worker waits at start for the engine ``serve`` started (then keeps trying).
_CONNECT_SECONDS = 30.0

Prompter = TemplatePrompter | TranscriptPrompter


def _logprobs(wire: list[TokenLogprobWire] | None) -> tuple[TokenLogprob, ...] | None:
    if wire is None:
        return None
    return tuple(
        TokenLogprob(
            token=t.token,
            logprob=t.logprob,
            bytes=tuple(t.bytes),
            top_logprobs=tuple(
                TopLogprob(token=a.token, logprob=a.logprob, bytes=tuple(a.bytes))
                for a in t.top_logprobs
            ),
        )
        for t in wire
    )


class LlamaCppProvider:
    supported_parameters: frozenset[str] = frozenset(
        {"logprobs", "top_logprobs", "response_format", "logit_bias", "tools", "tool_choice"}
    )

    def __init__(self, model_id: str, config: LlamaCppConfig, settings: Settings) -> None:
        """Blocking (the bundled model is assembled on first use): construct it off the loop."""
        self.model_id = model_id
        self.config = config
        self._path = config.path or prepare_bundled_model(
            settings.data_dir, show_progress=sys.stderr.isatty()
        )
        self._logs = EngineLogging(
            level=settings.log_level,
            format=log_format_of(settings),
            file=engine_log_file(settings.log_file, model_id),
        )
        #: ``serve`` runs the engines for its workers; otherwise this provider runs its own,
        #: listening in a private directory of its own.
        self._owns_engine = settings.engine_dir is None
        directory = settings.engine_dir or Path(tempfile.mkdtemp(prefix="chatbot-api-engine-"))
        self._socket = engine_socket(directory, model_id)
        self._supervisor = EngineSupervisor(model_id, self._path, config, self._socket, self._logs)
        self._client = EngineClient(model_id, self._socket)
        #: Built from the engine's first ``Hello`` (the GGUF's chat template, if any).
        self._prompter: Prompter | None = None

    @property
    def max_choices(self) -> int:
        """Most choices one request can ever get: every slot and every queue place."""
        return self.config.parallel + self.config.queue_size

    async def start(self) -> None:
        """Reach the model's engine: ``serve``'s, or one this provider starts and supervises."""
        if self._owns_engine:
            await self._supervisor.start()
        await self._client.start(wait_seconds=_CONNECT_SECONDS)

    @property
    def engine_pid(self) -> int | None:
        """The engine process's id, while it answers (for operators and tests)."""
        hello = self._client.hello
        return hello.pid if hello is not None else None

    @property
    def engine_socket(self) -> Path:
        """Where the engine listens (for operators and tests)."""
        return self._socket

    def _choose_prompter(self, hello: Hello) -> Prompter:
        """The GGUF's chat template unless told otherwise (the engine refuses to start when
        ``template`` is asked of a file without one)."""
        template = hello.chat_template
        if self.config.prompt_format == "transcript" or not template:
            return TranscriptPrompter()
        return TemplatePrompter(template, bos_token=hello.bos_token, eos_token=hello.eos_token)

    def _sampling(self, request: GenerationRequest, n_vocab: int) -> Sampling:
        wire = request.request
        config = self.config
        return Sampling(
            temperature=config.temperature if wire.temperature is None else wire.temperature,
            top_p=config.top_p if wire.top_p is None else wire.top_p,
            top_k=config.top_k,
            min_p=config.min_p,
            repeat_penalty=config.repeat_penalty,
            presence_penalty=wire.presence_penalty or 0.0,
            frequency_penalty=wire.frequency_penalty or 0.0,
            seed=request.seed,
            logit_bias=_logit_bias(wire.logit_bias, n_vocab),
        )

    def _message(
        self, request: GenerationRequest, plan: ToolPlan | None, *, count_only: bool = False
    ) -> Generate:
        """The engine's message for ``request``, its prompt rendered by the chat template."""
        hello = self._client.hello
        if hello is None:
            raise EngineUnavailableError(self.model_id, self._client.problem)
        if self._prompter is None:
            self._prompter = self._choose_prompter(hello)
        if plan is not None and not isinstance(self._prompter, TemplatePrompter):
            raise UnsupportedParameterError(
                f"Unsupported parameter: 'tools' needs a chat model, and model "
                f"'{self.model_id}' is served without a chat template.",
                param="tools",
            )
        try:
            if isinstance(self._prompter, TemplatePrompter) and self._prompter.renders_tools:
                prompt = self._prompter(request.messages, template_tools(plan))
            else:
                prompt = self._prompter(prompt_messages(request.messages, plan))
        except TemplateError as exc:
            raise InvalidRequestError(
                f"The model's chat template cannot render these messages: {exc}",
                param="messages",
            ) from None
        grammar = grammar_spec(request.request.response_format)
        if plan is not None:
            # Under ``auto``, an answer that is not a call still follows ``response_format``.
            answer = None
            if grammar is not None:
                answer = json.loads(grammar.schema) if grammar.schema else {"type": "object"}
            grammar = GrammarSpec(
                "lark", plan.grammar(answer), param="tools", rule_params=plan.rule_params()
            )
        # Under a grammar the output is JSON, which may hold the transcript's blank lines.
        # Stop strings end answers, not calls: a reply that can only be calls has none.
        forced = plan is not None and plan.choice == "required"
        stops = [] if forced else [*request.stop, *self.config.stop]
        if grammar is None:
            stops.extend(prompt.stops)
        return Generate(
            id=0,
            prompt=prompt.text,
            add_special=prompt.add_special,
            parse_special=prompt.parse_special,
            max_tokens=request.max_tokens,
            stops=stops,
            lstrip=prompt.lstrip,
            sampling=self._sampling(request, hello.n_vocab),
            grammar=grammar,
            logprobs=bool(request.request.logprobs),
            top_logprobs=request.request.top_logprobs or 0,
            request_id=request.request_id,
            count_only=count_only,
        )

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt's length in the model's own tokens, as its engine tokenises it."""
        message = self._message(request, plan_tools(request.request), count_only=True)
        answers = self._client.generate(message)
        async with aclosing(answers):
            async for answer in answers:
                if isinstance(answer, Finished):
                    return answer.prompt_tokens
        raise AssertionError("unreachable")  # pragma: no cover - answers end with Finished or raise

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        plan = plan_tools(request.request)
        message = self._message(request, plan)
        reader = ToolCallReader(plan) if plan is not None else None
        async for answer in self._client.generate(message):
            if isinstance(answer, Finished):
                reason: FinishReason = "length" if answer.reason == "length" else "stop"
                if reader is not None:
                    for event in reader.end():
                        yield event
                    if reader.finished_calls and reason == "stop":
                        reason = "tool_calls"
                yield Finish(reason)
                yield Usage(answer.prompt_tokens, answer.completion_tokens, answer.cached_tokens)
            elif reader is None:
                yield TextDelta(answer.text, logprobs=_logprobs(answer.logprobs))
            else:
                for piece in reader.feed(answer.text, _logprobs(answer.logprobs)):
                    yield piece

    def problem(self) -> str | None:
        return self._client.problem

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._owns_engine:
            await self._supervisor.stop()
            await asyncio.to_thread(shutil.rmtree, self._socket.parent, True)


#: A ``logit_bias`` key is a token id in ASCII decimal digits; more digits than this cannot be
#: a token of any vocabulary (and would only make ``int()`` work hard).
_MAX_TOKEN_DIGITS = 10


def _logit_bias(bias: dict[str, float] | None, n_vocab: int) -> dict[int, float]:
    result: dict[int, float] = {}
    for key, value in (bias or {}).items():
        token = (
            int(key)
            if key.isascii() and key.isdigit() and len(key) <= _MAX_TOKEN_DIGITS
            else n_vocab
        )
        if token >= n_vocab or not -100 <= value <= 100:
            raise InvalidRequestError(
                f"Invalid value for 'logit_bias': {key!r} must be a token id of this model "
                f"(0 to {n_vocab - 1}, in decimal digits) and its bias between -100 and 100.",
                param="logit_bias",
                code="invalid_value",
            )
        result[token] = value
    return result
