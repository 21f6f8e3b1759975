"""The llama.cpp provider's parts that need no HTTP server: prompts, schemas, engine start."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import jinja2
import pytest

from chatbot_api.errors import InvalidRequestError
from chatbot_api.providers.base import PromptMessage
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.prompt import (
    TemplatePrompter,
    TemplateRefusedError,
    TranscriptPrompter,
)
from chatbot_api.providers.llama.provider import LlamaCppProvider
from chatbot_api.providers.llama.structured import grammar_spec
from chatbot_api.providers.llama.supervisor import EngineStartError
from tests.conftest import make_settings

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_transcript_prompt() -> None:
    prompt = TranscriptPrompter()(
        [
            PromptMessage("system", "Be brief."),
            PromptMessage("user", " Hi "),
            PromptMessage("assistant", "Hello."),
            PromptMessage("tool", "42"),
            PromptMessage("user", "Thanks"),
        ]
    )

    assert prompt.text == (
        "Be brief.\n\nUser: Hi\nAssistant: Hello.\nTool: 42\nUser: Thanks\nAssistant:"
    )
    assert "\nUser:" in prompt.stops
    assert (prompt.add_special, prompt.parse_special, prompt.lstrip) == (True, False, True)


def test_transcript_without_a_system_message_gets_a_preamble() -> None:
    prompt = TranscriptPrompter()([PromptMessage("user", "Hi")])

    assert prompt.text.startswith("The following is a conversation")


def test_template_prompt_renders_the_models_template() -> None:
    prompt = TemplatePrompter(CHATML, bos_token="<s>", eos_token="</s>")(
        [PromptMessage("system", "Be brief."), PromptMessage("user", "Hi")]
    )

    assert prompt.text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert prompt.stops == ("</s>",)
    assert (prompt.add_special, prompt.parse_special) == (False, True)


def test_a_template_that_refuses_the_messages_says_so() -> None:
    alternating = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}"
        "{% endfor %}"
    )
    prompter = TemplatePrompter(alternating, bos_token="", eos_token="")

    with pytest.raises(TemplateRefusedError, match="System role not supported"):
        prompter([PromptMessage("system", "Be brief.")])
    # A refusal is a template error like any other, which the provider answers with 400.
    assert issubclass(TemplateRefusedError, jinja2.TemplateError)


def test_a_template_may_ask_for_the_date() -> None:
    prompter = TemplatePrompter("Today is {{ strftime_now('%Y') }}.", bos_token="", eos_token="")

    assert prompter([]).text == f"Today is {datetime.now().year}."


def test_template_tojson_writes_plain_json() -> None:
    prompter = TemplatePrompter("{{ messages | tojson }}", bos_token="", eos_token="")

    assert prompter([PromptMessage("user", "<b>&")]).text == (
        '[{"role": "user", "content": "<b>&"}]'
    )


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x"}},
            "response_format.json_schema.schema",
        ),
        ({"type": "json_schema", "json_schema": {"schema": [1]}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"schema": True}}, "response_format"),
        ({"type": "yaml"}, "response_format.type"),
    ],
)
def test_bad_response_formats(response_format: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        grammar_spec(response_format)

    assert caught.value.param == param


def test_a_schema_nested_too_deeply_is_refused_before_the_engine_sees_it() -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(200):
        schema = {"type": "array", "items": schema}

    with pytest.raises(InvalidRequestError, match="deeper than 100 levels"):
        grammar_spec({"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}})


def test_a_schema_too_large_is_refused() -> None:
    schema = {"enum": ["x" * 1000] * 1100}

    with pytest.raises(InvalidRequestError, match="larger than"):
        grammar_spec({"type": "json_schema", "json_schema": {"name": "big", "schema": schema}})


def test_equal_schemas_are_sent_alike() -> None:
    a = grammar_spec({"type": "json_schema", "json_schema": {"schema": {"a": 1, "b": 2}}})
    b = grammar_spec({"type": "json_schema", "json_schema": {"schema": {"b": 2, "a": 1}}})

    assert a == b


def test_text_format_needs_no_grammar() -> None:
    assert grammar_spec({"type": "text"}) is None
    assert grammar_spec(None) is None


@pytest.mark.anyio
async def test_template_format_on_a_file_without_one_is_refused(
    data_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    gguf = prepare_bundled_model(data_dir, show_progress=False)
    provider = LlamaCppProvider(
        "x", LlamaCppConfig(path=gguf, prompt_format="template"), make_settings()
    )

    try:
        with pytest.raises(EngineStartError, match="engine of model 'x' exited with status 1"):
            await provider.start()
    finally:
        await provider.aclose()
    # The engine's own log line says why, before it exits.
    assert "prompt_format is 'template' but the GGUF file has no chat template" in (
        capfd.readouterr().err
    )


@pytest.mark.anyio
async def test_a_file_that_is_not_a_gguf_stops_start_up(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model")
    provider = LlamaCppProvider("x", LlamaCppConfig(path=fake), make_settings())

    try:
        with pytest.raises(EngineStartError, match="engine of model 'x' exited with status 1"):
            await provider.start()
    finally:
        await provider.aclose()


def test_the_bundled_file_is_prepared_once(tmp_path: Path) -> None:
    first = prepare_bundled_model(tmp_path, show_progress=False)
    stamp = first.stat().st_mtime_ns

    again = prepare_bundled_model(tmp_path, show_progress=False)

    assert again == first
    assert again.stat().st_mtime_ns == stamp
    assert first.stat().st_size > 200_000_000
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no scratch left behind
