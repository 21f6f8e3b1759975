"""The engines ``chatbot-api serve`` runs for its workers: one process per local model.

``serve`` starts them before any worker, so that every worker connects to the same engine (one
copy of the weights, one batch for all their requests), and stops them after the last worker
has finished. Their supervisors run on an event loop in a thread of their own, beside
uvicorn's.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from chatbot_api.config import Settings
from chatbot_api.logs import log_format_of
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.supervisor import (
    EngineLogging,
    EngineSupervisor,
    engine_log_file,
    engine_socket,
)
from chatbot_api.providers.registry import ModelSpec, start_all

__all__ = ["EngineHost"]


class EngineHost:
    def __init__(self, specs: Sequence[ModelSpec], settings: Settings) -> None:
        self._specs = [spec for spec in specs if isinstance(spec.config, LlamaCppConfig)]
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engines", daemon=True)
        self._supervisors: list[EngineSupervisor] = []
        self.directory: Path | None = None

    def start(self) -> Path | None:
        """Start every local model's engine and wait until all serve (blocking).

        Returns the directory their sockets are in (None without local models). Raises
        :class:`~.supervisor.EngineStartError` when one cannot start; those already started
        are stopped again.
        """
        if not self._specs:
            return None
        self.directory = Path(tempfile.mkdtemp(prefix="chatbot-api-engines-"))
        settings = self._settings
        for spec in self._specs:
            config = spec.config
            assert isinstance(config, LlamaCppConfig)
            path = config.path or prepare_bundled_model(
                settings.data_dir, show_progress=sys.stderr.isatty()
            )
            self._supervisors.append(
                EngineSupervisor(
                    spec.id,
                    path,
                    config,
                    engine_socket(self.directory, spec.id),
                    EngineLogging(
                        level=settings.log_level,
                        format=log_format_of(settings),
                        file=engine_log_file(settings.log_file, spec.id),
                    ),
                )
            )
        self._thread.start()
        try:
            self._call(start_all(supervisor.start() for supervisor in self._supervisors))
        except BaseException:
            self.stop()
            raise
        return self.directory

    def stop(self) -> None:
        """Stop every engine (after the workers are gone), then the thread (blocking)."""
        if self._thread.is_alive():
            for supervisor in self._supervisors:
                self._call(supervisor.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _call(self, work: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result()
