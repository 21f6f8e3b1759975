"""Route llama.cpp's own log lines into our logging instead of raw standard error.

llama.cpp reports model loading at INFO in hundreds of lines; those become DEBUG records here,
as do its warnings while a model loads (remarks on the file's tokens or the cache layout that
nobody running the server can act on); other warnings and every error stay what they are, and
all of them carry our format.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp

__all__ = ["loading_quietly", "route_native_logs"]

logger = logging.getLogger("chatbot_api.llama_cpp")

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line).
_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_state = threading.local()
_loading = threading.Event()


def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level != 5:
        _state.level = _LEVELS.get(level, logging.DEBUG)
        if _state.level == logging.WARNING and _loading.is_set():
            _state.level = logging.DEBUG
    buffered = getattr(_state, "buffer", "") + text.decode("utf-8", errors="replace")
    *lines, rest = buffered.split("\n")
    _state.buffer = rest
    severity = getattr(_state, "level", logging.DEBUG)
    for line in lines:
        if line.strip():
            logger.log(severity, line.rstrip())


# One for the process, kept for its lifetime: llama.cpp calls it through a bare pointer.
_CALLBACK = llama_cpp.llama_log_callback(_on_log)


def route_native_logs() -> None:
    """Make our callback llama.cpp's one global log sink (setting it again changes nothing)."""
    llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p(0))


@contextmanager
def loading_quietly() -> Iterator[None]:
    """While the block loads a model and makes its context, llama.cpp's warnings are DEBUG."""
    _loading.set()
    try:
        yield
    finally:
        _loading.clear()
