"""Prefix reuse in the llama engine: a prompt that starts as an earlier one did (the next turn
of a conversation) keeps that earlier prompt's KV cells, and answers as a cold prefill would.

Two models on the same GGUF: ``warm`` keeps finished sequences' cells in their slots, ``cold``
(``cache_prompt = false``) prefills every prompt from scratch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from chatbot_api.app import create_app
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from tests.conftest import make_settings
from tests.servers import LiveServer

MODELS_TOML = """
[models.warm]
provider = "llama_cpp"
path = "{gguf}"
parallel = 2
context_size = 1024

[models.cold]
provider = "llama_cpp"
path = "{gguf}"
parallel = 2
context_size = 1024
cache_prompt = false
# No penalties either: they only change tokens after the first, which is all these tests read.
repeat_penalty = 1.0
"""

#: Gemma's end of text (1) and of turn (106): the first reply token is a word, with logprobs.
NO_END_OF_TURN = {"1": -100, "106": -100}
SYSTEM = "You are a patient teacher who answers in full sentences about geography and history."


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[openai.OpenAI]:
    config = tmp_path_factory.mktemp("cache") / "models.toml"
    config.write_text(MODELS_TOML.format(gguf=prepare_bundled_model(data_dir, show_progress=False)))
    app = create_app(make_settings(models_file=config, data_dir=data_dir))
    with (
        LiveServer(app) as live,
        openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="unused", max_retries=0) as client,
    ):
        yield client


def _ask(
    sdk: openai.OpenAI, model: str, messages: list[ChatCompletionMessageParam], seed: int
) -> ChatCompletion:
    return sdk.chat.completions.create(
        model=model, messages=messages, temperature=0, seed=seed, max_tokens=20
    )


def _cached(completion: ChatCompletion) -> int:
    assert completion.usage is not None
    details = completion.usage.prompt_tokens_details
    assert details is not None
    assert details.cached_tokens is not None
    return details.cached_tokens


def _conversation(topic: str) -> list[ChatCompletionMessageParam]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Tell me something about {topic}."},
    ]


def _first_token(completion: ChatCompletion) -> dict[str, float]:
    """The first reply token's five likeliest tokens and their log probabilities."""
    assert completion.choices[0].logprobs is not None
    content = completion.choices[0].logprobs.content
    assert content
    return {choice.token: choice.logprob for choice in content[0].top_logprobs}


def _next_token(
    sdk: openai.OpenAI, model: str, messages: list[ChatCompletionMessageParam]
) -> ChatCompletion:
    """A few tokens with the five likeliest at each: a first token of white space alone is held
    back (a transcript's reply starts after "Assistant:") and comes with the first text.
    Greedy, so that no sampled newline ends the reply before it has any."""
    return sdk.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=4,
        logprobs=True,
        top_logprobs=5,
        logit_bias=NO_END_OF_TURN,
    )


@pytest.mark.parametrize("topic", ["rivers", "the first railways", "volcanoes", "old maps"])
def test_a_next_turn_reuses_the_conversation_and_predicts_as_a_cold_prefill(
    sdk: openai.OpenAI, topic: str
) -> None:
    """The reused cells are the right ones: the next token's distribution is a cold prefill's.

    Not bit for bit: llama.cpp's CPU kernels round differently for different batch shapes (a
    prompt prefilled in one piece, or in two, or a token decoded alone), so the same prompt
    computed in other pieces moves log probabilities by up to about 0.2 here, enough to swap
    two near-equal tokens (docs/benchmarks.md). A wrong reuse (another conversation's cells, a
    prefix off by one position) moves them by whole units and changes the likeliest tokens.
    """
    history = _conversation(topic)
    first = _ask(sdk, "warm", history, 1)
    assert first.usage is not None
    history += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And what happened there a hundred years ago?"},
    ]

    warm, cold = _next_token(sdk, "warm", history), _next_token(sdk, "cold", history)

    # Everything the first turn's prompt held is reused; only the new turn is prefilled.
    assert warm.usage is not None
    assert cold.usage is not None
    assert first.usage.prompt_tokens <= _cached(warm) < warm.usage.prompt_tokens
    assert _cached(cold) == 0
    assert warm.usage.prompt_tokens == cold.usage.prompt_tokens
    warm_top, cold_top = _first_token(warm), _first_token(cold)
    assert len(warm_top.keys() & cold_top.keys()) >= 4
    for token in warm_top.keys() & cold_top.keys():
        assert warm_top[token] == pytest.approx(cold_top[token], abs=0.25)


def test_the_same_prompt_again_keeps_all_but_its_last_token(sdk: openai.OpenAI) -> None:
    """The last prompt token is decoded again: its logits give the first reply token."""
    messages = _conversation("the tallest mountains")
    once = _ask(sdk, "warm", messages, 3)
    again = _ask(sdk, "warm", messages, 3)

    assert again.usage is not None
    assert _cached(again) == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content == once.choices[0].message.content


def test_a_streamed_answer_reports_cached_tokens_too(sdk: openai.OpenAI) -> None:
    messages = _conversation("old harbours")
    _ask(sdk, "warm", messages, 5)
    chunks = list(
        sdk.chat.completions.create(
            model="warm",
            messages=messages,
            seed=5,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


def test_two_conversations_keep_their_own_slots_and_a_third_evicts_the_older(
    sdk: openai.OpenAI,
) -> None:
    """Two slots: each conversation finds its prefix in its own; a third, unrelated prompt takes
    the least recently used slot, and the conversation that had it starts cold again."""
    a, b = _conversation("deserts"), _conversation("glaciers")
    _ask(sdk, "warm", a, 1)
    _ask(sdk, "warm", b, 1)
    a_again, b_again = _ask(sdk, "warm", a, 1), _ask(sdk, "warm", b, 1)
    assert a_again.usage is not None
    assert b_again.usage is not None
    assert _cached(a_again) == a_again.usage.prompt_tokens - 1
    assert _cached(b_again) == b_again.usage.prompt_tokens - 1

    # Unrelated enough to share nothing with either: it evicts a (used before b).
    sdk.chat.completions.create(
        model="warm", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    b_third, a_third = _ask(sdk, "warm", b, 1), _ask(sdk, "warm", a, 1)
    assert b_third.usage is not None
    assert a_third.usage is not None
    assert _cached(b_third) == b_third.usage.prompt_tokens - 1
    # Only what it shares with another slot's prompt (the system message) is left for it.
    assert _cached(a_third) < a_third.usage.prompt_tokens - 1


def _rules(count: int, question: str) -> list[ChatCompletionMessageParam]:
    rules = " ".join(f"Rule {i}: be kind to animal number {i}." for i in range(count))
    return [{"role": "user", "content": f"{rules} Question: {question}"}]


def test_a_prefix_whose_cells_went_to_another_conversation_is_not_reused(
    sdk: openai.OpenAI,
) -> None:
    """Gemma 3's sliding-window layers look 512 tokens back, and llama.cpp hands the cells
    of a kept sequence that no window reaches any more to other sequences. A later prompt
    sharing that sequence's first 500-odd tokens must not be given the damaged prefix: it is
    prefilled again, and predicts as a cold prefill does."""
    _ask(sdk, "warm", [{"role": "user", "content": "What is two plus two?"}], 1)
    long = _next_token(sdk, "warm", _rules(66, "what is rule 3?"))  # ~900 tokens, kept
    assert long.usage is not None
    assert long.usage.prompt_tokens > 800
    # An unrelated prompt takes the other slot, and cells the long one no longer needs.
    _ask(sdk, "warm", [{"role": "user", "content": "apple " * 250}], 1)

    sharing = _rules(45, "what is rule 2?")  # its first ~540 tokens are the long one's
    warm, cold = _next_token(sdk, "warm", sharing), _next_token(sdk, "cold", sharing)

    assert _cached(warm) == 0
    warm_top, cold_top = _first_token(warm), _first_token(cold)
    assert len(warm_top.keys() & cold_top.keys()) >= 4
    for token in warm_top.keys() & cold_top.keys():
        assert warm_top[token] == pytest.approx(cold_top[token], abs=0.25)


def test_a_shared_long_system_prompt_is_copied_not_taken_from_another_conversation(
    sdk: openai.OpenAI,
) -> None:
    """Two conversations under one long system prompt: the second gets the prompt's cells
    shared into a slot of its own, and the first keeps its whole turn for its next one."""
    system = " ".join(f"Guideline {i}: answer politely and briefly." for i in range(60))

    def conversation(question: str) -> list[ChatCompletionMessageParam]:
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]

    a = conversation("Where do penguins live?")
    first_a = _ask(sdk, "warm", a, 2)
    b = _ask(sdk, "warm", conversation("What do owls eat?"), 2)
    assert first_a.usage is not None
    assert b.usage is not None
    assert _cached(b) > b.usage.prompt_tokens // 2  # the system prompt, not computed again

    a += [
        {"role": "assistant", "content": first_a.choices[0].message.content or ""},
        {"role": "user", "content": "And how cold is it there?"},
    ]
    # All of its first turn but the few tokens its end re-tokenises to ("Assistant:" then a
    # reply): had b trimmed a's slot to the system prompt, its question would be gone too.
    assert _cached(_ask(sdk, "warm", a, 2)) > first_a.usage.prompt_tokens - 10
