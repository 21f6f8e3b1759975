"""The price of a gateway: our server in front of an upstream, against LiteLLM's proxy in
front of the same upstream, and against calling the upstream directly, in one run.

The upstream is a bare Starlette app (``bench.floor_app``: it answers a chat completion, or
streams one word by word, with no work of its own), one uvicorn worker pinned to core 0
with wrk; the proxy under test (ours with an ``openai`` model entry, LiteLLM's with a
``model_list`` entry; one worker each, the same master key checked by both) has core 1 to
itself. Each case gets a warm-up, then the three take turns for several rounds; medians are
compared. Cases: concurrency 64 (throughput) and concurrency 1 (added p50: a proxy's p50
minus the upstream's own), each non-streamed and streamed. LiteLLM comes from
``.bench/litellm`` (``make bench`` installs ``litellm[proxy]`` there, apart from our
virtualenv).

Targets: at concurrency 64 our throughput at least 5 times LiteLLM's; at concurrency 1 our
added p50 at most 1 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.harness import Result, bench_env, free_port, lua, server_process, wrk

BODY = (
    '{"model": "%s", %s"messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Hello there, how are you doing today?"}]}'
)
STREAM = '"stream": true, '
LITELLM = Path(".bench/litellm/bin/litellm")
#: Both proxies check the same kind of key: an admin key held in memory (LiteLLM refuses to
#: start without one).
MASTER = "sk-bench-master-key-0123456789abcdef"
TARGETS = ("upstream", "ours", "litellm")


@contextmanager
def _serving(command: list[str], env: dict[str, str], port: int, core: int) -> Iterator[str]:
    pinned = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    with server_process([*pinned, *command], port, env, pinned=False, wait=120) as (url, _):
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not LITELLM.exists():
        sys.exit(f"{LITELLM} is missing: make bench installs LiteLLM's proxy there")

    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        base = bench_env(bundled_model="false", log_level="WARNING")
        up_port = free_port()
        upstream = running.enter_context(
            _serving(
                [
                    *(sys.executable, "-m", "uvicorn", "bench.floor_app:app"),
                    *("--port", str(up_port), "--log-level", "warning", "--no-access-log"),
                ],
                base,
                up_port,
                core=0,
            )
        )
        models = Path(scratch) / "models.toml"
        models.write_text(
            f'[models."echo-up"]\nprovider = "openai"\nbase_url = "{upstream}/v1"\n'
            'upstream_model = "echo"\nmax_retries = 0\n'
        )
        ours_port = free_port()
        ours = running.enter_context(
            _serving(
                [sys.executable, "-m", "chatbot_api", "serve", "--port", str(ours_port)],
                {
                    **base,
                    "CHATBOT_AUTH": "auto",
                    "CHATBOT_MASTER_KEY": MASTER,
                    "CHATBOT_MODELS_FILE": str(models),
                    "CHATBOT_DATABASE_URL": f"sqlite+aiosqlite:///{scratch}/ours.db",
                },
                ours_port,
                core=1,
            )
        )
        config = Path(scratch) / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: echo-up\n"
            "    litellm_params:\n"
            "      model: openai/echo\n"
            f"      api_base: {upstream}/v1\n"
            "      api_key: unused\n"
            "litellm_settings:\n"
            "  drop_params: true\n"
            "  set_verbose: false\n"
        )
        litellm_port = free_port()
        litellm_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CHATBOT_")},
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": MASTER,
            "LITELLM_LOG": "ERROR",
        }
        litellm = running.enter_context(
            _serving(
                [
                    *(str(LITELLM), "--config", str(config)),
                    *("--port", str(litellm_port), "--num_workers", "1"),
                ],
                litellm_env,
                litellm_port,
                core=1,
            )
        )
        urls = {"upstream": upstream, "ours": ours, "litellm": litellm}
        scripts: dict[tuple[str, bool], Path] = {}
        for name in TARGETS:
            model = "echo" if name == "upstream" else "echo-up"
            key = {} if name == "upstream" else {"Authorization": f"Bearer {MASTER}"}
            for streamed in (False, True):
                path = Path(scratch) / f"{name}-{streamed}.lua"
                path.write_text(lua(BODY % (model, STREAM if streamed else ""), key))
                scripts[name, streamed] = path
        cases = [(64, False), (64, True), (1, False), (1, True)]
        runs: dict[tuple[str, int, bool], list[Result]] = {}
        for name in TARGETS:
            wrk(urls[name], scripts[name, False], 64, 3, core=0)  # warm-up
        for _ in range(args.rounds):
            for concurrency, streamed in cases:
                for name in TARGETS:
                    result = wrk(
                        urls[name],
                        scripts[name, streamed],
                        concurrency,
                        args.seconds,
                        core=0,
                        timeout=30,  # LiteLLM's streams at c=64 take longer than wrk's 2 s
                    )
                    runs.setdefault((name, concurrency, streamed), []).append(result)

    def median(name: str, concurrency: int, streamed: bool, field: str) -> float:
        values = (getattr(r, field) for r in runs[name, concurrency, streamed])
        return float(statistics.median(values))

    print(
        "POST /v1/chat/completions through a gateway to a bare Starlette upstream; "
        f"{args.rounds} rounds x {args.seconds}s per case, taking turns (medians)\n"
    )
    print(
        f"{'case':<22} {'':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} "
        f"{'errors':>7}"
    )
    for concurrency, streamed in cases:
        case = f"c={concurrency} {'streamed' if streamed else 'non-streamed'}"
        direct = median("upstream", concurrency, streamed, "p50_ms")
        for name in TARGETS:
            p50 = median(name, concurrency, streamed, "p50_ms")
            added = p50 - direct if name != "upstream" else 0.0
            errors = sum(r.errors for r in runs[name, concurrency, streamed])
            print(
                f"{case:<22} {name:<9} "
                f"{median(name, concurrency, streamed, 'requests_per_second'):>8.0f} "
                f"{p50:>8.2f} {median(name, concurrency, streamed, 'p99_ms'):>8.2f} "
                f"{added:>10.2f} {errors:>7}"
            )
    print()
    for streamed in (False, True):
        kind = "streamed" if streamed else "non-streamed"
        ours_rps = median("ours", 64, streamed, "requests_per_second")
        theirs = median("litellm", 64, streamed, "requests_per_second")
        alone = median("upstream", 64, streamed, "requests_per_second")
        direct = median("upstream", 1, streamed, "p50_ms")
        ours_added = median("ours", 1, streamed, "p50_ms") - direct
        print(
            f"{kind}: throughput at c=64, ours / LiteLLM {ours_rps / theirs:.2f} (target >= 5), "
            f"ours / upstream alone {ours_rps / alone:.2f}; our added p50 at c=1 "
            f"{ours_added:.2f} ms "
            "(target <= 1)"
        )


if __name__ == "__main__":
    main()
