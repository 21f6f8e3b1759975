"""Settings come from CHATBOT_* variables and .env; .env.example documents every one."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from chatbot_api.config import Settings

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"


def _example_values() -> dict[str, str]:
    values = {}
    for line in EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_env_example_documents_every_setting_with_its_default() -> None:
    documented = _example_values()
    defaults = Settings(_env_file=None)

    assert set(documented) == {f"CHATBOT_{name.upper()}" for name in Settings.model_fields}
    for name in Settings.model_fields:
        default = getattr(defaults, name)
        shown = documented[f"CHATBOT_{name.upper()}"]
        assert shown == _as_written(default), name


def _as_written(default: object) -> str:
    if default is None:
        return ""
    if isinstance(default, list):
        return ",".join(default)
    return str(default)


def test_the_configuration_page_documents_every_setting() -> None:
    page = (EXAMPLE.parent / "docs" / "configuration.md").read_text()

    for name in Settings.model_fields:
        assert f"`CHATBOT_{name.upper()}`" in page, name


def test_environment_and_dotenv_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("CHATBOT_PORT=9001\nCHATBOT_LOG_FORMAT=console\n")
    monkeypatch.setenv("CHATBOT_PORT", "9002")

    settings = Settings(_env_file=dotenv)

    assert settings.port == 9002  # the environment wins over the file
    assert settings.log_format == "console"


def test_cors_origins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATBOT_CORS_ORIGINS", "https://a.example, https://b.example")

    assert Settings(_env_file=None).cors_origins == ["https://a.example", "https://b.example"]


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATBOT_LOG_FORMAT", "xml")

    with pytest.raises(ValidationError, match="log_format"):
        Settings(_env_file=None)


def test_the_example_file_loads_as_it_is() -> None:
    """Copied to .env unchanged, it gives the defaults."""
    assert Settings(_env_file=EXAMPLE) == Settings(_env_file=None)
