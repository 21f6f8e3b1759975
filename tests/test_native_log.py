"""llama.cpp's own log lines, through llama.cpp's logging, into ours."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import llama_cpp
import pytest

from chatbot_api.providers.llama.native_log import loading_quietly, route_native_logs

# ggml_log_level as llama.cpp numbers it.
INFO, WARN, ERROR, CONT = 2, 3, 4, 5


def _llama_log(level: int, text: bytes) -> None:
    """Log ``text`` the way llama.cpp's own code does (its LLAMA_LOG_* macros call this)."""
    library = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libllama.so"))
    log = library["_Z18llama_log_internal14ggml_log_levelPKcz"]  # its C++ name
    log.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p]
    log(level, b"%s", text)


def test_native_lines_become_records_and_blank_ones_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatbot_api.llama_cpp")
    route_native_logs()
    route_native_logs()  # an engine made twice in one process: still one sink, no duplicates

    for level, text in [
        (INFO, b"llama_model_loader: loaded meta data\n"),
        (INFO, b"\n"),  # blank lines and dots of progress carry nothing worth a record
        (CONT, b"   \n"),
        (WARN, b"load: special tokens cache size"),
        (CONT, b" = 6414\n"),
        (ERROR, b"first line\nsecond line\n"),
    ]:
        _llama_log(level, text)

    records = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "chatbot_api.llama_cpp"
    ]
    assert records == [
        (logging.DEBUG, "llama_model_loader: loaded meta data"),  # loading chatter: DEBUG
        (logging.WARNING, "load: special tokens cache size = 6414"),  # continued, joined
        (logging.ERROR, "first line"),
        (logging.ERROR, "second line"),
    ]


def test_warnings_while_a_model_loads_are_debug_and_later_ones_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="chatbot_api.llama_cpp")
    route_native_logs()
    with loading_quietly():
        _llama_log(WARN, b"load: control-looking token was not control-type\n")
        _llama_log(ERROR, b"llama_model_load: error loading model\n")
    _llama_log(WARN, b"decode: a warning while serving\n")

    records = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "chatbot_api.llama_cpp"
    ]
    assert records == [
        (logging.DEBUG, "load: control-looking token was not control-type"),
        (logging.ERROR, "llama_model_load: error loading model"),  # errors stay errors
        (logging.WARNING, "decode: a warning while serving"),
    ]
