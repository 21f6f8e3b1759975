"""Logging set-up: JSON lines (python-json-logger) or a rich console, with size-based rotation.

Every record carries the id of the request it belongs to, taken from the request context.
Nothing is formatted or written on the caller's thread: the root logger's one handler puts each
record on a queue, and a thread of its own formats and writes it (stderr, the log file). A slow
disk or a blocked terminal then holds up that thread, never the event loop.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import queue
import sys
from pathlib import Path

from pythonjsonlogger.msgspec import MsgspecFormatter
from rich.console import Console
from rich.logging import RichHandler

from chatbot_api.config import Settings
from chatbot_api.context import current_request

__all__ = ["RequestIdFilter", "configure_logging", "log_format_of", "reset_logging"]

_JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_RENAMES = {"asctime": "timestamp", "levelname": "level", "name": "logger"}
_OURS = "_chatbot_api_handler"


class RequestIdFilter(logging.Filter):
    """Stamps ``request_id`` on every record logged while a request is being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            context = current_request()
            record.request_id = context.request_id if context else None
        return True


#: Where a record keeps its JSON line once made.
_FORMATTED = "_chatbot_api_json"


class _JsonOnce(MsgspecFormatter):
    """JSON lines with msgspec's encoder (two thirds of the stdlib encoder's time per line, on
    the line every request writes: the access log), made once per record however many
    handlers write it (standard error and the log file share this formatter)."""

    def format(self, record: logging.LogRecord) -> str:
        made: str | None = record.__dict__.get(_FORMATTED)
        if made is None:
            made = super().format(record)
            record.__dict__[_FORMATTED] = made
        return made


def _json_formatter() -> MsgspecFormatter:
    return _JsonOnce(_JSON_FORMAT, rename_fields=_RENAMES, timestamp=False)


class _Handoff(logging.handlers.QueueHandler):
    """Hands records to the writing thread as they are: the stdlib's version formats each
    one here first (for queues that cross processes), which is the work to keep off the loop.
    Only the message is fixed now, since its arguments may change once the caller goes on."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.listener: logging.handlers.QueueListener | None = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg = record.getMessage()
        record.args = None
        # Uvicorn's copy of the message with terminal colour codes in it: JSON lines would
        # carry it as a field, and the console handler colours on its own.
        record.__dict__.pop("color_message", None)
        return record

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()  # writes what is queued, then ends the thread
            for handler in self.listener.handlers:
                handler.close()
            self.listener = None
        super().close()


#: Loggers whose INFO lines are set-up chatter (Alembic names its plugins and its dialect at
#: every start): they are shown at DEBUG.
_CHATTY = ("alembic",)


class _QuietLibraries(logging.Filter):
    """Demote the chatty libraries' INFO records to DEBUG, and drop them unless the root
    logger shows DEBUG (their loggers inherit its level, so the records got this far)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name.startswith(_CHATTY):
            record.levelno = logging.DEBUG
            record.levelname = "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def reset_logging() -> None:
    """Remove (and close) the handlers an earlier :func:`configure_logging` installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
            handler.close()


def _log_file_of_this_process(settings: Settings) -> Path:
    """The log file, or with several workers one per process (``api.<pid>.log``): processes
    sharing one rotating file would rotate it under each other and lose lines."""
    assert settings.log_file is not None
    if settings.workers <= 1:
        return settings.log_file
    path = settings.log_file
    return path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")


def log_format_of(settings: Settings) -> str:
    """``console`` or ``json``: the setting, or unset, what standard error is (a person at a
    terminal reads the console; a pipe, a file or a collector reads JSON)."""
    if settings.log_format is not None:
        return settings.log_format
    return "console" if sys.stderr.isatty() else "json"


def configure_logging(settings: Settings) -> None:
    """Install our handlers on the root logger; safe to call again with new settings."""
    reset_logging()
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    # Nothing we write names the thread or process a record came from: not looking them up
    # for every record (the access log writes one per request) is the stdlib's own switch.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

    handlers: list[logging.Handler] = []
    json_lines = _json_formatter()
    if log_format_of(settings) == "console":
        handlers.append(
            RichHandler(
                console=Console(stderr=True),
                rich_tracebacks=True,
                show_path=False,
                log_time_format="[%X]",
            )
        )
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(json_lines)
        handlers.append(stream)
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            _log_file_of_this_process(settings),
            maxBytes=settings.log_max_bytes,
            backupCount=settings.log_backup_count,
            encoding="utf-8",
        )
        rotating.setFormatter(json_lines)
        handlers.append(rotating)

    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handoff = _Handoff(records)
    setattr(handoff, _OURS, True)
    # The request's id is read here, on the thread (and in the context) that logged.
    handoff.addFilter(RequestIdFilter())
    handoff.addFilter(_QuietLibraries())
    handoff.listener = logging.handlers.QueueListener(records, *handlers)
    handoff.listener.start()
    root.addHandler(handoff)

    # Uvicorn's own loggers flow into ours; its access log is replaced by the middleware's.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # The HTTP client logs every request it sends upstream at INFO: the access log already
    # names the deployment, and the gateway logs each failure itself.
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, root.level))
