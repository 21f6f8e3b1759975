"""The ``chatbot-api`` command: ``serve`` and ``models``."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import uvicorn
from rich.console import Console
from rich.table import Table

from chatbot_api import __version__
from chatbot_api.config import Settings
from chatbot_api.db.engine import Database, default_database_url
from chatbot_api.http_protocol import BoundedHttpToolsProtocol
from chatbot_api.logs import configure_logging
from chatbot_api.metrics import multiprocess_directory, remove_multiprocess_directory
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.host import EngineHost
from chatbot_api.providers.llama.supervisor import EngineStartError
from chatbot_api.providers.registry import ModelsFileError, load_model_specs
from chatbot_api.security.auth import is_loopback
from chatbot_api.security.keys import KeyStore, parse_duration

__all__ = ["main"]

T = TypeVar("T")


def _parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatbot-api", description="A self-hosted, OpenAI-compatible chatbot API."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default=settings.host, help=f"default {settings.host}")
    serve.add_argument("--port", type=int, default=settings.port, help=f"default {settings.port}")
    serve.add_argument(
        "--workers", type=int, default=settings.workers, help=f"default {settings.workers}"
    )

    models = commands.add_parser("models", help="list the configured models")
    models.add_argument("--json", action="store_true", help="JSON on standard output, for scripts")
    models.add_argument(
        "--prepare",
        action="store_true",
        help="also write the bundled model's GGUF into the data directory now (image builds)",
    )

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser(
        "create", help="make a key; prints the key alone on standard output"
    )
    create.add_argument("--name", required=True)
    create.add_argument("--models", help="comma-separated model ids the key may use (all)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--expires-in", help="lifetime, e.g. 12h, 30d (never)")
    listing = key_commands.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="JSON on standard output, for scripts")
    revoke = key_commands.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("id")

    database = commands.add_parser("db", help="manage the database schema")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    database_commands.add_parser("upgrade", help="apply every pending migration")
    return parser


def _serve(settings: Settings) -> int:
    configure_logging(settings)
    # Uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again against
    # the handler it found at start. A no-op handler there lets a clean shutdown exit 0,
    # which is what process managers and orchestrators read as success.
    for shutdown_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(shutdown_signal, lambda signum, frame: None)
    # Local models run in engine processes of their own, started before the workers and
    # shared by all of them; the workers find them through CHATBOT_ENGINE_DIR.
    engines = EngineHost(list(load_model_specs(settings).values()), settings)
    try:
        engine_dir = engines.start()
    except EngineStartError as exc:
        print(f"chatbot-api: {exc}", file=sys.stderr)
        return 2
    if engine_dir is not None:
        os.environ["CHATBOT_ENGINE_DIR"] = str(engine_dir)
    # Several workers keep their metrics in files that /metrics adds up (see metrics.py).
    metrics_dir = multiprocess_directory() if settings.workers > 1 else None
    # Workers read their settings from the environment: tell them they are several, and
    # where they listen (the command line's --host and --port), to say so at start.
    os.environ["CHATBOT_WORKERS"] = str(settings.workers)
    os.environ["CHATBOT_HOST"] = settings.host
    os.environ["CHATBOT_PORT"] = str(settings.port)
    try:
        _run_uvicorn(settings)
    finally:
        engines.stop()
        if metrics_dir is not None:
            remove_multiprocess_directory(metrics_dir)
    return 0


def _run_uvicorn(settings: Settings) -> None:
    uvicorn.run(
        "chatbot_api.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
        server_header=False,
        # httptools with bounds on a request's head (size and time): see http_protocol.
        http=BoundedHttpToolsProtocol,
        # After the streams' grace period (they end themselves), time to flush the store.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds) + 10,
    )


def _models(settings: Settings, *, prepare: bool = False, as_json: bool = False) -> int:
    if prepare and settings.bundled_model:
        print(prepare_bundled_model(settings.data_dir), file=sys.stderr)
    specs = load_model_specs(settings)
    if as_json:
        _print_json(
            [
                {"id": s.id, "provider": s.provider, "owned_by": s.owned_by, "source": s.source}
                for s in specs.values()
            ]
        )
        return 0
    table = Table(title="Configured models")
    for column in ("id", "provider", "owned_by", "source"):
        table.add_column(column)
    for spec in specs.values():
        table.add_row(spec.id, spec.provider, spec.owned_by, spec.source)
    _console().print(table)
    return 0


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    url = settings.database_url or default_database_url(settings.data_dir)
    database = Database(url, busy_timeout_ms=settings.database_busy_timeout_ms)
    try:
        await database.migrate()
        return await work(database)
    finally:
        await database.dispose()


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    command = args.keys_command
    if command == "create":
        expires_in = parse_duration(args.expires_in) if args.expires_in else None
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        key, record = asyncio.run(
            _with_database(
                settings,
                lambda db: KeyStore(db).create(
                    args.name, models=models, rpm=args.rpm, tpm=args.tpm, expires_in=expires_in
                ),
            )
        )
        print(key)
        print(f"created {record.id} ({record.name}); the key above is shown once", file=sys.stderr)
        return 0
    if command == "revoke":
        revoked = asyncio.run(_with_database(settings, lambda db: KeyStore(db).revoke(args.id)))
        if revoked is None:
            print(f"chatbot-api: no key with id {args.id}", file=sys.stderr)
            return 1
        print(f"revoked {revoked.id} ({revoked.name})", file=sys.stderr)
        return 0
    records = asyncio.run(_with_database(settings, lambda db: KeyStore(db).list()))
    if args.json:
        _print_json([record.public() for record in records])
        return 0
    table = Table(title="API keys")
    for column in ("id", "name", "prefix", "models", "rpm", "tpm", "expires", "revoked"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record.id,
            record.name,
            str(record.public()["prefix"]),
            ",".join(record.models) if record.models is not None else "all",
            str(record.rpm or "-"),
            str(record.tpm or "-"),
            _when(record.expires_at),
            _when(record.revoked_at),
        )
    _console().print(table)
    return 0


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _refuse_open_on_network(settings: Settings) -> str | None:
    """Why ``serve`` must not start, or None: an open API only on a loopback address."""
    if settings.auth == "disabled" or settings.master_key is not None:
        return None
    if is_loopback(settings.host):
        return None
    if asyncio.run(_with_database(settings, lambda db: KeyStore(db).any())):
        return None
    return (
        f"refusing to serve on {settings.host} with no master key and no API keys: anyone "
        "could use it. Set CHATBOT_MASTER_KEY, create a key ('chatbot-api keys create'), or "
        "set CHATBOT_AUTH=disabled to serve openly on purpose."
    )


def _db_upgrade(settings: Settings) -> int:
    async def nothing_more(database: Database) -> str:
        return database.engine.url.render_as_string()  # the password hidden

    url = asyncio.run(_with_database(settings, nothing_more))
    print(f"database schema is current: {url}", file=sys.stderr)
    return 0


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _console() -> Console:
    """A terminal's own width; piped or captured, wide enough that ids are never cut."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings()
    args = _parser(settings).parse_args(argv)
    try:
        if args.command == "serve":
            settings = settings.model_copy(
                update={"host": args.host, "port": args.port, "workers": args.workers}
            )
            # Fail fast, with the file, model and key named, before any worker starts.
            load_model_specs(settings)
            refusal = _refuse_open_on_network(settings)
            if refusal is not None:
                print(f"chatbot-api: {refusal}", file=sys.stderr)
                return 2
            return _serve(settings)
        if args.command == "keys":
            return _keys(settings, args)
        if args.command == "db":
            return _db_upgrade(settings)
        return _models(settings, prepare=args.prepare, as_json=args.json)
    except (ModelsFileError, ValueError) as exc:
        print(f"chatbot-api: {exc}", file=sys.stderr)
        return 2
