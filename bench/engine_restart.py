"""How long a local model is out of service when its engine process dies.

``chatbot-api serve`` with the bundled model; a streamed request is running when the engine
is killed with SIGKILL (as the kernel's OOM killer or a C++ abort would end it). Measured from
the kill: how long until the running stream's client learns (its error event), and how long
until a new request is answered again. The baseline is what the same outage cost before the
engine had a process of its own: restarting the whole server, from start to a first answer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.harness import bench_env, free_port, server_process

BODY = {
    "model": "gemma-3-270m",
    "messages": [{"role": "user", "content": "Tell me a long story."}],
    "max_tokens": 4,
}


def _answered(base: str) -> bool:
    try:
        return httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=30).status_code == 200
    except httpx.TransportError:
        return False


def _engine_pid(log: Path) -> int:
    while True:
        for line in log.read_text().splitlines():
            if '"engine ready"' in line:
                pid = json.loads(line)["pid"]
                if Path(f"/proc/{pid}").exists():
                    return int(pid)
        time.sleep(0.05)


def _one_outage(base: str, log: Path) -> tuple[float, float]:
    """Seconds from the kill until the stream ends with its error, and until service."""
    pid = _engine_pid(log)
    stream_ended = threading.Event()
    running = threading.Event()

    def stream() -> None:
        body = {**BODY, "stream": True, "max_tokens": 400, "logit_bias": {"1": -100, "106": -100}}
        url = f"{base}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=60) as answer:
            for line in answer.iter_lines():
                if '"content":"' in line:
                    running.set()
        stream_ended.set()

    reader = threading.Thread(target=stream)
    reader.start()
    running.wait(30)
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    stream_ended.wait(30)
    told = time.perf_counter() - killed
    while not _answered(base):
        time.sleep(0.02)
    back = time.perf_counter() - killed
    reader.join()
    return told, back


def _round(env: dict[str, str], log: Path) -> tuple[float, float, float]:
    """A fresh server: its cold start to a first answer, then one engine outage."""
    log.unlink(missing_ok=True)
    port = free_port()
    started = time.perf_counter()
    command = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
    with server_process(command, port, env, pinned=False, wait=120) as (base, _):
        while not _answered(base):
            time.sleep(0.02)
        cold = time.perf_counter() - started
        told, back = _one_outage(base, log)
    return cold, told, back


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "api.log"
        env = bench_env(
            data_dir=str(Path("data").resolve()),
            log_file=str(log),
            database_url=f"sqlite+aiosqlite:///{scratch}/bench.db",
        )
        # A fresh server each round: the first restart after a crash waits no backoff.
        rounds = [
            _round(env, log.with_name("api.engine.gemma-3-270m.log")) for _ in range(args.rounds)
        ]
    cold = statistics.median(c for c, _, _ in rounds)
    told = statistics.median(t for _, t, _ in rounds)
    back = statistics.median(b for _, _, b in rounds)
    print(f"median of {args.rounds} rounds, each on a fresh server\n")
    print(f"{'measure':<52} {'seconds':>8}")
    print(f"{'kill -> the running stream gets its error event':<52} {told:>8.3f}")
    print(f"{'kill -> a new request is answered (engine restart)':<52} {back:>8.3f}")
    print(f"{'baseline: whole server start -> first answer':<52} {cold:>8.3f}")
    print(f"\nrestart / whole-server start: {back / cold:.2f}")


if __name__ == "__main__":
    main()
