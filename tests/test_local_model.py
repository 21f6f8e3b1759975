"""The bundled Gemma 3 270M served by llama.cpp: real generations, kept short."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import GEMMA_NEVER_STOP, ServerFactory
from tests.servers import LiveServer

MODEL = "gemma-3-270m"
FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@pytest.fixture
def sdk(llama_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{llama_server.base_url}/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


def test_models_lists_the_bundled_model(sdk: openai.OpenAI) -> None:
    assert MODEL in {model.id for model in sdk.models.list()}


def test_greedy_answer_is_sensible(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)

    choice = completion.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 5
    assert 0 < completion.usage.completion_tokens < 40


def test_same_seed_same_text(sdk: openai.OpenAI) -> None:
    """Without prefix reuse: with it, the repeat reuses the first prompt's cells and llama.cpp's
    kernels round a prompt computed in other pieces differently (tests/test_prompt_cache.py)."""

    def sample(seed: int) -> str:
        completion = sdk.chat.completions.create(
            model="tiny-slot",
            messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
            temperature=1.2,
            seed=seed,
            max_tokens=24,
        )
        return completion.choices[0].message.content or ""

    first = sample(1234)
    assert first
    assert sample(1234) == first


def test_stream_matches_the_non_streamed_answer(sdk: openai.OpenAI) -> None:
    whole = sdk.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_stop_string_ends_the_answer_and_is_not_returned(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, stop=["Paris"]
    )

    content = completion.choices[0].message.content or ""
    assert "Paris" not in content
    assert content.startswith("The capital of France")
    assert completion.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_completion_tokens=3
    )

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_n_runs_separate_sequences(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=FRANCE, n=2, max_tokens=8, seed=3, logit_bias=GEMMA_NEVER_STOP
    )

    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content for c in completion.choices)


def test_json_schema_output_parses_and_matches(sdk: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        # Bounded, so that the longest answer the schema allows fits in max_tokens.
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 30},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat with its name and age."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "cat", "schema": schema, "strict": True},
        },
        max_tokens=60,
        seed=5,
    )

    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), schema)


def test_json_object_output_parses(sdk: openai.OpenAI) -> None:
    # Nothing bounds an object's length: a sample may be cut by max_tokens (then it is an
    # object's beginning), and one of a few seeds closes its object.
    whole = []
    for seed in range(8, 14):
        completion = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give me a JSON object about a dog."}],
            response_format={"type": "json_object"},
            max_tokens=120,
            seed=seed,
        )
        choice = completion.choices[0]
        if choice.finish_reason == "length":
            assert (choice.message.content or "").startswith("{")
            continue
        assert choice.finish_reason == "stop"
        whole.append(json.loads(choice.message.content or ""))
        break
    assert whole
    assert isinstance(whole[0], dict)


def test_logprobs(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, logprobs=True, top_logprobs=3, max_tokens=4
    )

    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content) == 4
    for entry in logprobs.content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        ranked = [alt.logprob for alt in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy decoding picks the most likely token.
        assert entry.token == entry.top_logprobs[0].token


def test_logprobs_without_alternatives(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, logprobs=True, max_tokens=3
    )

    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert [entry.top_logprobs for entry in logprobs.content] == [[], [], []]
    # The tokens are the model's own: the transcript prompt's reply drops their first space.
    assert "".join(entry.token for entry in logprobs.content).lstrip() == (
        completion.choices[0].message.content
    )


def test_a_model_that_ends_its_turn_at_once_gives_an_empty_answer(sdk: openai.OpenAI) -> None:
    # Token 1 is the end of text: biased up, it is the first thing the model says.
    completion = sdk.chat.completions.create(
        model=MODEL, messages=FRANCE, logit_bias={"1": 100}, max_tokens=10
    )

    assert completion.choices[0].message.content == ""
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 1


def test_sampling_without_top_k_or_min_p(sdk: openai.OpenAI) -> None:
    # `tiny-slot` sets top_k and min_p to 0: the sampler chain leaves those stages out.
    def sample() -> str:
        completion = sdk.chat.completions.create(
            model="tiny-slot", messages=FRANCE, temperature=1.0, seed=77, max_tokens=6
        )
        return completion.choices[0].message.content or ""

    first = sample()
    assert first
    assert sample() == first


@pytest.mark.anyio
async def test_long_prompts_fed_in_chunks_beside_others_give_the_same_answer(
    llama_server: LiveServer,
) -> None:
    """Three prompts of about 600 tokens each do not fit one 512-token batch: they are fed in
    chunks across steps, beside each other. Greedy decoding gives the same answer as alone."""
    client = openai.AsyncOpenAI(
        base_url=f"{llama_server.base_url}/v1", api_key="unused", max_retries=0
    )

    async def ask(topic: str) -> str:
        facts = " ".join(f"Fact {n} about {topic}: it is interesting." for n in range(60))
        completion = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"{facts} Summarise {topic} in one line."}],
            temperature=0,
            max_tokens=8,
        )
        assert completion.usage is not None
        assert completion.usage.prompt_tokens > 512
        return completion.choices[0].message.content or ""

    alone = await ask("rivers")
    together = await asyncio.gather(ask("rivers"), ask("mountains"), ask("deserts"))
    await client.close()

    assert together[0] == alone


@pytest.mark.parametrize("streams", [2, 4])
@pytest.mark.anyio
async def test_overlapping_streams_all_complete(llama_server: LiveServer, streams: int) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{llama_server.base_url}/v1", api_key="unused", max_retries=0
    )
    questions = ["Tell me about dogs.", "What is 2+2?", "Who wrote Hamlet?", "Describe a river."]
    first_content: list[float] = []
    finished: list[float] = []

    async def one(question: str) -> tuple[str, str | None]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            stream=True,
            max_tokens=40,
            seed=11,
            # A short answer ("4") could end before a later stream began: each runs 40 tokens.
            logit_bias=GEMMA_NEVER_STOP,
        )
        text: list[str] = []
        reason: str | None = None
        async for chunk in stream:
            choice = chunk.choices[0]
            if choice.delta.content:
                if not text:
                    first_content.append(time.monotonic())
                text.append(choice.delta.content)
            reason = choice.finish_reason or reason
        finished.append(time.monotonic())
        return "".join(text), reason

    results = await asyncio.gather(*(one(q) for q in questions[:streams]))
    await client.close()

    assert all(text for text, _ in results)
    assert all(reason == "length" for _, reason in results)
    # Every stream was under way before any finished: they ran together, not in turn.
    assert len(first_content) == streams
    assert max(first_content) < min(finished)


def test_full_slots_and_queue_answer_503(sdk: openai.OpenAI, llama_server: LiveServer) -> None:
    long_story: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Tell me a very long story."}
    ]
    with httpx.stream(
        "POST",
        f"{llama_server.base_url}/v1/chat/completions",
        json={
            "model": "tiny-slot",
            "messages": long_story,
            "stream": True,
            "max_tokens": 100,
            # Nothing that ends an answer: the sequence runs its 100 tokens and keeps the slot.
            "logit_bias": GEMMA_NEVER_STOP,
        },
    ) as busy:
        # Keep the iterator: a discarded one is closed, which closes the stream, which (as it
        # should) frees the slot at once.
        lines = busy.iter_lines()
        next(lines)  # the only sequence is now taken
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(model="tiny-slot", messages=FRANCE)

    assert caught.value.status_code == 503
    assert caught.value.code == "server_overloaded"
    assert caught.value.response.headers["retry-after"] == "1"
    # The slot comes back once the server sees the client leave (a moment after it closed),
    # as a client honouring Retry-After finds; the next tests need it free too.
    deadline = time.monotonic() + 30
    while True:
        try:
            sdk.chat.completions.create(model="tiny-slot", messages=FRANCE, max_tokens=1)
            break
        except openai.InternalServerError:
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.2)


def test_prompt_longer_than_the_context_is_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="tiny-slot", messages=[{"role": "user", "content": "word " * 200}]
        )

    assert caught.value.code == "context_length_exceeded"
    assert "128" in caught.value.message


def test_prompt_plus_max_tokens_over_the_context_is_400(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="tiny-slot", messages=FRANCE, max_tokens=120)

    assert caught.value.code == "context_length_exceeded"


def test_tools_on_a_model_without_a_chat_template_are_refused_not_dropped(
    sdk: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        )

    assert caught.value.param == "tools"
    assert "chat template" in caught.value.message


def test_bad_schema_and_bias_are_400(sdk: openai.OpenAI) -> None:
    bad: list[dict[str, Any]] = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        {"response_format": {"type": "yaml"}},
        {"logit_bias": {"not-a-token": 5}},
    ]
    for extra in bad:
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(model=MODEL, messages=FRANCE, **extra)


def test_disconnect_cancels_the_sequence(start_server: ServerFactory, tmp_path: Path) -> None:
    log_file = tmp_path / "api.log"
    server = start_server(bundled_model=True, log_file=log_file)

    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a long essay about the sea."}],
            "stream": True,
            "max_tokens": 1000,
            "stop": ["\u2603"],
            "logit_bias": GEMMA_NEVER_STOP,  # still writing when the client leaves
        },
    ) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)

    # The model's engine process keeps a log file of its own beside the server's.
    engine_log = tmp_path / f"api.engine.{MODEL}.log"
    deadline = time.monotonic() + 10
    cancelled: list[dict[str, Any]] = []
    while not cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
        written = engine_log.read_text().splitlines() if engine_log.exists() else []
        cancelled = [r for r in map(json.loads, written) if r["message"] == "sequence cancelled"]
    assert cancelled, "the engine never dropped the sequence"
    assert cancelled[0]["completion_tokens"] < 100


def test_a_frequency_penalty_keeps_a_long_reply_from_repeating_itself(sdk: openai.OpenAI) -> None:
    """Greedy and 100 tokens long, past the 64-token window the penalties count over: left
    alone the model loops on a few words; penalised by how often a token already came, it
    uses many more different ones."""

    def tokens(penalty: float) -> list[str]:
        completion = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Write about the sea."}],
            temperature=0,
            max_tokens=100,
            frequency_penalty=penalty,
            logprobs=True,
            logit_bias=GEMMA_NEVER_STOP,  # all 100 tokens come
        )
        assert completion.choices[0].logprobs is not None
        content = completion.choices[0].logprobs.content
        assert content is not None
        return [entry.token for entry in content]

    plain, penalised = tokens(0.0), tokens(1.5)

    assert len(plain) == len(penalised) == 100
    assert len(set(penalised)) > len(set(plain)) + 10
