"""The llama.cpp provider's parts that need no running server: prompts, grammars, loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbot_api.errors import InvalidRequestError
from chatbot_api.providers.base import PromptMessage
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.prompt import TemplatePrompter, TranscriptPrompter
from chatbot_api.providers.llama.provider import LlamaCppProvider
from chatbot_api.providers.llama.sampling import grammar_for

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


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x"}},
            "response_format.json_schema.schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}},
            "response_format.json_schema.schema",
        ),
        ({"type": "yaml"}, "response_format.type"),
    ],
)
def test_bad_response_formats(response_format: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        grammar_for(response_format)

    assert caught.value.param == param


def test_text_format_needs_no_grammar() -> None:
    assert grammar_for({"type": "text"}) is None
    assert grammar_for(None) is None


def test_template_format_on_a_file_without_one_is_refused(data_dir: Path) -> None:
    gguf = prepare_bundled_model(data_dir, show_progress=False)

    with pytest.raises(ValueError, match="no chat template"):
        LlamaCppProvider("x", LlamaCppConfig(path=gguf, prompt_format="template"), data_dir)


def test_a_file_that_is_not_a_gguf_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a model")

    with pytest.raises(RuntimeError, match="could not load the model file"):
        LlamaCppProvider("x", LlamaCppConfig(path=fake), tmp_path)


def test_the_bundled_file_is_prepared_once(tmp_path: Path) -> None:
    first = prepare_bundled_model(tmp_path, show_progress=False)
    stamp = first.stat().st_mtime_ns

    again = prepare_bundled_model(tmp_path, show_progress=False)

    assert again == first
    assert again.stat().st_mtime_ns == stamp
    assert first.stat().st_size > 200_000_000
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no scratch left behind
