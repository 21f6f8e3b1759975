"""Structured-output coverage on JSONSchemaBench: compiled, valid, crashed.

JSONSchemaBench (github.com/guidance-ai/jsonschemabench; Geng et al., 2025) collects about
10,000 real-world JSON schemas in ten categories. For a sample of each category (the same
sample for a given ``--seed``), the bundled model is asked, through our API, for a JSON value
under the schema (``response_format: json_schema``), and each answer is sorted:

* **compiled**: the request was accepted (not a 400 naming ``response_format``);
* **valid**: the answer ended by itself (``finish_reason: stop``) and validates against the
  schema with ``jsonschema`` (format checks on);
* **truncated**: cut off by ``max_tokens`` (valid JSON cannot be judged);
* **crashes**: a 5xx, a dropped connection, or an engine restart. Must be zero.

The data are not vendored: point ``--data`` (or ``JSONSCHEMABENCH_DIR``) at the ``data/``
folder of a checkout; ``make bench`` clones the repository into ``.bench/`` when it can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError
from referencing.exceptions import Unresolvable

from bench.harness import bench_env, free_port, server_process
from chatbot_api.providers.llama.bundled import prepare_bundled_model

#: Empirical coverage on Github_hard published with the benchmark (compiled and valid).
PUBLISHED_GITHUB_HARD = {
    "llguidance": 0.41,
    "llama.cpp grammars": 0.39,
    "XGrammar": 0.28,
    "OpenAI": 0.09,
    "Outlines": 0.03,
}
SYSTEM = "You answer with a single JSON value that follows the given JSON schema."


@dataclass
class Tally:
    total: int = 0
    compiled: int = 0
    valid: int = 0
    truncated: int = 0
    invalid: int = 0
    unverifiable: int = 0
    crashes: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    #: What each crash was: a status and the start of its body, or the connection error.
    crash_details: list[str] = field(default_factory=list)


def _sample(
    data: Path, per_category: int, seed: int, only: list[str] | None
) -> list[tuple[str, Any]]:
    """``per_category`` schemas of each category, chosen at random with ``seed`` (each
    category's choice is the same whichever others are measured)."""
    chosen: list[tuple[str, Any]] = []
    for category in sorted(p for p in data.iterdir() if p.is_dir()):
        if only and category.name not in only:
            continue
        files = sorted(category.glob("*.json"))
        random.Random(f"{seed}:{category.name}").shuffle(files)
        chosen += [(category.name, json.loads(path.read_text())) for path in files[:per_category]]
    return chosen


def _judge(schema: dict[str, Any], content: str) -> str:
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        return "invalid"
    try:
        validator = jsonschema.validators.validator_for(schema)
        validator(schema, format_checker=validator.FORMAT_CHECKER).validate(value)
    except ValidationError:
        return "invalid"
    except (SchemaError, Unresolvable, RecursionError):
        return "unverifiable"
    return "valid"


async def _one(
    client: httpx.AsyncClient, url: str, schema: Any, max_tokens: int, tally: Tally
) -> None:
    tally.total += 1
    body = {
        "model": "bench",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Write the JSON value."},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "bench", "schema": schema},
        },
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    try:
        answer = await client.post(url, json=body)
    except httpx.TransportError as exc:
        tally.crashes += 1
        tally.crash_details.append(f"{type(exc).__name__}: {exc}")
        return
    if answer.status_code >= 500:
        tally.crashes += 1
        tally.crash_details.append(f"{answer.status_code}: {answer.text[:300]}")
        return
    if answer.status_code != 200:
        error = answer.json()["error"]
        reason = error["message"] if error.get("param") == "response_format" else error["code"]
        tally.refusals[str(reason).removeprefix("Invalid schema for response_format: ")[:60]] += 1
        return
    tally.compiled += 1
    choice = answer.json()["choices"][0]
    if choice["finish_reason"] != "stop":
        tally.truncated += 1
        return
    verdict = _judge(schema, choice["message"]["content"])
    setattr(tally, verdict, getattr(tally, verdict) + 1)


async def _run(
    base: str, sample: list[tuple[str, Any]], max_tokens: int, concurrency: int
) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    gate = asyncio.Semaphore(concurrency)
    url = f"{base}/v1/chat/completions"

    async with httpx.AsyncClient(timeout=600) as client:

        async def one(category: str, schema: Any) -> None:
            async with gate:
                await _one(client, url, schema, max_tokens, tallies.setdefault(category, Tally()))

        await asyncio.gather(*(one(category, schema) for category, schema in sample))
        metrics = (await client.get(f"{base}/metrics")).text
    restarts = [
        line for line in metrics.splitlines() if line.startswith("chatbot_engine_restarts{")
    ]
    restarted = sum(float(line.rsplit(" ", 1)[1]) for line in restarts)
    if restarted:
        tallies.setdefault("(engine restarts)", Tally()).crashes += int(restarted)
    return tallies


def _report(tallies: dict[str, Tally], args: argparse.Namespace) -> None:
    print(
        f"JSONSchemaBench sample: {args.per_category} schemas per category (seed {args.seed}), "
        f"bundled Gemma 3 270M, temperature 0, max_tokens {args.max_tokens}\n"
    )
    header = f"{'category':<16} {'n':>4} {'compiled':>9} {'valid':>7} {'truncated':>10}"
    print(header + f" {'invalid':>8} {'unverif.':>9} {'crashes':>8}")
    every = Tally()
    for category, t in sorted(tallies.items()):
        for name in ("total", "compiled", "valid", "truncated", "invalid", "unverifiable"):
            setattr(every, name, getattr(every, name) + getattr(t, name))
        every.crashes += t.crashes
        every.refusals.update(t.refusals)
        _row(category, t)
    _row("all", every)
    hard = tallies.get("Github_hard")
    if hard is not None and hard.total:
        print(f"\nGithub_hard, compiled and valid: ours {hard.valid / hard.total:.0%}; published:")
        for engine, share in PUBLISHED_GITHUB_HARD.items():
            print(f"  {engine:<20} {share:.0%}")
    for category, t in sorted(tallies.items()):
        for detail in t.crash_details:
            print(f"crash in {category}: {detail}")
    print("\nwhy schemas were refused (most common):")
    for reason, count in every.refusals.most_common(10):
        print(f"  {count:>4}  {reason}")


def _row(name: str, t: Tally) -> None:
    def share(part: int) -> str:
        return f"{part / t.total:.0%}" if t.total else "-"

    print(
        f"{name:<16} {t.total:>4} {share(t.compiled):>9} {share(t.valid):>7} "
        f"{share(t.truncated):>10} {share(t.invalid):>8} {share(t.unverifiable):>9} "
        f"{t.crashes:>8}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("JSONSCHEMABENCH_DIR", ".bench/jsonschemabench/data")),
    )
    parser.add_argument("--per-category", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--category", action="append", help="only these (repeatable)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no JSONSchemaBench data at {args.data}; see this module's docstring")
    sample = _sample(args.data, args.per_category, args.seed, args.category)
    gguf = prepare_bundled_model(Path("data"), show_progress=True).resolve()
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models.toml"
        models.write_text(
            f'[models.bench]\nprovider = "llama_cpp"\npath = "{gguf}"\n'
            f"parallel = {args.concurrency}\ncontext_size = {args.max_tokens + 256}\n"
        )
        env = bench_env(
            models_file=str(models),
            bundled_model="false",
            log_level="WARNING",
            database_url=f"sqlite+aiosqlite:///{scratch}/bench.db",
        )
        port = free_port()
        command = [sys.executable, "-m", "chatbot_api", "serve", "--port", str(port)]
        with server_process(command, port, env, pinned=False, wait=120) as (base, _):
            tallies = asyncio.run(_run(base, sample, args.max_tokens, args.concurrency))
    _report(tallies, args)


if __name__ == "__main__":
    main()
