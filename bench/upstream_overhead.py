"""The price of a proxy: our server in front of an upstream, against LiteLLM's proxy in front of
the same upstream, and against calling the upstream directly, in one run.

The upstream is our own server serving ``echo`` (one worker), pinned to core 0 with wrk; the
proxy under test (ours with an ``openai`` model entry, or LiteLLM's with a ``model_list``
entry, one worker each, the same master key checked) has core 1 to itself. Each gets a
warm-up, then the three take turns for several rounds; medians compared. Added latency is a
proxy's p50 minus the upstream's own. LiteLLM comes from ``.bench/litellm`` (``make bench``
installs ``litellm[proxy]`` there, apart from our virtualenv).
Targets: our added p50 at most a third of LiteLLM's; our throughput at least twice its.
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
    '{"model": "%s", "messages": [{"role": "system", "content": "You are terse."}, '
    '{"role": "user", "content": "Hello there, how are you doing today?"}]}'
)
LITELLM = Path(".bench/litellm/bin/litellm")
#: Both proxies check the same kind of key: an admin key held in memory (LiteLLM refuses to
#: start without one).
MASTER = "sk-bench-master-key-0123456789abcdef"


@contextmanager
def _serving(command: list[str], env: dict[str, str], port: int, core: int) -> Iterator[str]:
    pinned = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    with server_process([*pinned, *command], port, env, pinned=False, wait=120) as (url, _):
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if not LITELLM.exists():
        sys.exit(f"{LITELLM} is missing: make bench installs LiteLLM's proxy there")

    with tempfile.TemporaryDirectory() as scratch, ExitStack() as running:
        base = bench_env(bundled_model="false", log_level="WARNING", auth="disabled")
        up_port = free_port()
        upstream = running.enter_context(
            _serving(
                [sys.executable, "-m", "chatbot_api", "serve", "--port", str(up_port)],
                {**base, "CHATBOT_DATABASE_URL": f"sqlite+aiosqlite:///{scratch}/up.db"},
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
                    str(LITELLM),
                    "--config",
                    str(config),
                    "--port",
                    str(litellm_port),
                    "--num_workers",
                    "1",
                ],
                litellm_env,
                litellm_port,
                core=1,
            )
        )
        targets = {
            "upstream": (upstream, "echo"),
            "ours": (ours, "echo-up"),
            "litellm": (litellm, "echo-up"),
        }
        scripts = {}
        for name, (_, model) in targets.items():
            scripts[name] = Path(scratch) / f"{name}.lua"
            key = {} if name == "upstream" else {"Authorization": f"Bearer {MASTER}"}
            scripts[name].write_text(lua(BODY % model, key))
        for name, (url, _) in targets.items():
            wrk(url, scripts[name], args.concurrency, 3)  # warm-up
        runs: dict[str, list[Result]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (url, _) in targets.items():
                runs[name].append(wrk(url, scripts[name], args.concurrency, args.seconds))

    def median(name: str, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs[name]))

    print(
        f"POST /v1/chat/completions through a proxy to our echo upstream, concurrency "
        f"{args.concurrency}, {args.rounds} x {args.seconds}s each, taking turns (medians)\n"
    )
    print(f"{'':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'errors':>7}")
    direct = median("upstream", "p50_ms")
    for name in targets:
        added = median(name, "p50_ms") - direct if name != "upstream" else 0.0
        errors = sum(r.errors for r in runs[name])
        print(
            f"{name:<9} {median(name, 'requests_per_second'):>8.0f} "
            f"{median(name, 'p50_ms'):>8.2f} {median(name, 'p99_ms'):>8.2f} "
            f"{added:>10.2f} {errors:>7}"
        )
    ours_added = median("ours", "p50_ms") - direct
    litellm_added = median("litellm", "p50_ms") - direct
    throughput = median("ours", "requests_per_second") / median("litellm", "requests_per_second")
    print(
        f"\nadded p50, ours / LiteLLM: {ours_added / litellm_added:.2f} (target <= 0.33); "
        f"throughput, ours / LiteLLM: {throughput:.2f} (target >= 2)"
    )


if __name__ == "__main__":
    main()
