"""The models file: merged over the built-ins, and refused with a precise message when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbot_api.providers.registry import ModelsFileError, load_model_specs
from tests.conftest import make_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_no_file_serves_the_built_ins() -> None:
    assert list(load_model_specs(make_settings())) == ["echo"]


def test_file_entries_join_and_override_the_built_ins(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[models."my-bot"]\nprovider = "echo"\nowned_by = "me"\ncreated = 1700000000\n'
        '[models.echo]\nprovider = "echo"\nowned_by = "ops"\n',
    )

    specs = load_model_specs(make_settings(models_file=path))

    assert specs["my-bot"].owned_by == "me"
    assert specs["my-bot"].created == 1700000000
    assert specs["my-bot"].source == str(path)
    assert specs["echo"].owned_by == "ops"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[models."a"]\nprovider = "echo"\ncolour = "red"\n', "key 'colour': unknown key"),
        ('[models."a"]\nprovider = "gpt"\n', "model 'a': key 'provider': unknown provider 'gpt'"),
        ('[models."a"]\nowned_by = "me"\n', "model 'a': missing key 'provider'"),
        ('[models."a"]\nprovider = "echo"\ntoken_delay = -1\n', "model 'a': key 'token_delay'"),
        ('[models."a"]\nprovider = "echo"\nowned_by = 3\n', "model 'a': key 'owned_by'"),
        ('[models."a"]\nprovider = "echo"\ncreated = "soon"\n', "model 'a': key 'created'"),
        ("[models]\na = 1\n", "model 'a': expected a table"),
        ("models = 1\n", "'models' must be a table"),
        ("[servers]\n", "unknown top-level key 'servers'"),
        ("[models\n", "not valid TOML"),
        (
            '[models."a"]\nprovider = "llama_cpp"\nparallel = 64\nbatch_size = 32\n',
            "model 'a': key 'batch_size': must be at least parallel (64)",
        ),
        (
            '[models."a"]\nprovider = "llama_cpp"\ncontext_size = 100000000\n',
            "model 'a': key 'context_size'",
        ),
    ],
)
def test_bad_files_name_the_file_model_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(ModelsFileError) as caught:
        load_model_specs(make_settings(models_file=path))

    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="cannot be read"):
        load_model_specs(make_settings(models_file=tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"\xff\xfe{{ messages }}", "is not UTF-8 text"), (b"x" * (1024 * 1024 + 1), "is larger")],
)
def test_a_chat_template_file_that_is_no_template_is_named(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    template = tmp_path / "template.jinja"
    template.write_bytes(content)
    path = _write(
        tmp_path,
        f'[models."a"]\nprovider = "llama_cpp"\nchat_template_file = "{template}"\n',
    )

    with pytest.raises(ModelsFileError) as caught:
        load_model_specs(make_settings(models_file=path))

    assert "model 'a': key 'chat_template_file'" in str(caught.value)
    assert expected in str(caught.value)
