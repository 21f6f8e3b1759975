"""The ``llama_cpp`` provider: the async face of an :class:`~.engine.Engine`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import llama_cpp

from chatbot_api.errors import ContextLengthExceededError, InvalidRequestError
from chatbot_api.providers.base import (
    Finish,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    Usage,
)
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.engine import Engine
from chatbot_api.providers.llama.prompt import Prompt, TemplatePrompter, TranscriptPrompter
from chatbot_api.providers.llama.sampling import SamplingParams, grammar_for
from chatbot_api.providers.llama.sequence import Done, Emission, Failure, Sequence

__all__ = ["LlamaCppProvider"]

logger = logging.getLogger(__name__)


class LlamaCppProvider:
    supported_parameters: frozenset[str] = frozenset(
        {"logprobs", "top_logprobs", "response_format", "logit_bias"}
    )

    def __init__(self, model_id: str, config: LlamaCppConfig, data_dir: Path) -> None:
        """Blocking (prepares and loads the model): construct it off the event loop."""
        path = config.path or prepare_bundled_model(data_dir, show_progress=sys.stderr.isatty())
        self.config = config
        self._engine = Engine(model_id, path, config)
        self._prompter = self._choose_prompter(config)
        logger.info(
            "model loaded",
            extra={"model": model_id, "path": str(path), "prompt_format": self.prompt_format},
        )

    def _choose_prompter(self, config: LlamaCppConfig) -> TemplatePrompter | TranscriptPrompter:
        template = self._engine.chat_template()
        if config.prompt_format == "transcript" or (
            config.prompt_format == "auto" and not template
        ):
            self.prompt_format = "transcript"
            return TranscriptPrompter()
        if not template:
            raise ValueError("prompt_format is 'template' but the GGUF file has no chat template")
        self.prompt_format = "template"
        vocab = self._engine.vocab
        return TemplatePrompter(
            template,
            bos_token=self._engine.token_text(llama_cpp.llama_vocab_bos(vocab)),
            eos_token=self._engine.token_text(llama_cpp.llama_vocab_eos(vocab)),
        )

    def _sampling(self, request: GenerationRequest) -> SamplingParams:
        wire = request.request
        config = self.config
        return SamplingParams(
            temperature=config.temperature if wire.temperature is None else wire.temperature,
            top_p=config.top_p if wire.top_p is None else wire.top_p,
            top_k=config.top_k,
            min_p=config.min_p,
            repeat_penalty=config.repeat_penalty,
            presence_penalty=wire.presence_penalty or 0.0,
            frequency_penalty=wire.frequency_penalty or 0.0,
            seed=request.seed,
            grammar=grammar_for(wire.response_format),
            logit_bias=self._logit_bias(wire.logit_bias),
            logprobs=bool(wire.logprobs),
            top_logprobs=wire.top_logprobs or 0,
        )

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float]:
        result: dict[int, float] = {}
        for key, value in (bias or {}).items():
            if not key.isdigit() or int(key) >= self._engine.n_vocab or not -100 <= value <= 100:
                raise InvalidRequestError(
                    f"Invalid value for 'logit_bias': {key!r} must be a token id of this model "
                    "and its bias between -100 and 100.",
                    param="logit_bias",
                    code="invalid_value",
                )
            result[int(key)] = value
        return result

    def _limit(self, request: GenerationRequest, prompt_tokens: int) -> int:
        context = self.config.context_size
        asked = request.max_tokens
        if prompt_tokens >= context or (asked is not None and prompt_tokens + asked > context):
            completion = f" and {asked} in the completion" if asked is not None else ""
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt_tokens + (asked or 0)} tokens ({prompt_tokens} in the "
                f"messages{completion}). Please reduce the length of the messages or completion.",
                param="messages",
            )
        wanted = asked if asked is not None else self.config.max_tokens
        return min(wanted, context - prompt_tokens)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        prompt: Prompt = self._prompter(request.messages)
        params = self._sampling(request)
        tokens = await asyncio.to_thread(
            self._engine.tokenize,
            prompt.text,
            add_special=prompt.add_special,
            parse_special=prompt.parse_special,
        )
        # Under a grammar the output is JSON, which may hold the transcript's blank lines.
        stops = request.stop + tuple(self.config.stop)
        if params.grammar is None:
            stops += prompt.stops
        sequence = Sequence(
            prompt=tokens,
            params=params,
            max_tokens=self._limit(request, len(tokens)),
            stops=stops,
            loop=asyncio.get_running_loop(),
            lstrip=prompt.lstrip,
        )
        self._engine.submit(sequence)
        try:
            while True:
                event = await sequence.next_event()
                if isinstance(event, Emission):
                    yield TextDelta(event.text, logprobs=event.logprobs)
                elif isinstance(event, Done):
                    yield Finish(event.reason)
                    yield Usage(len(tokens), event.completion_tokens)
                    return
                else:
                    assert isinstance(event, Failure)
                    raise event.error
        finally:
            sequence.cancelled = True

    def problem(self) -> str | None:
        return None if self._engine.running else "its decode thread has stopped"

    async def aclose(self) -> None:
        await asyncio.to_thread(self._engine.close)
