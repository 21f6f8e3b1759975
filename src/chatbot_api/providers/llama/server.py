"""The engine process of one local model: llama.cpp, its decode loop and grammars, behind a socket.

``python -m chatbot_api.providers.llama.server '<EngineSpec as JSON>'`` loads the model, listens
on the spec's Unix socket and writes ``ready`` on standard output. API workers connect and
speak ``protocol``: each ``Generate`` reserves a place at once (or is refused with 503), is
tokenised and has its grammar compiled in threads, then joins the decode loop; its events go
back on the connection it came from. A worker that disconnects cancels its requests.

The process lives as long as its supervisor: it ends when its standard input closes (the
supervisor stopped it, or died), and ignores SIGINT and SIGTERM so that a signal meant for the
whole process group does not cut off streams the API is still finishing. If the decode loop
itself fails, the process exits with status 70 and the supervisor starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import llama_cpp
import msgspec

from chatbot_api.config import Settings
from chatbot_api.errors import ChatbotAPIError, ContextLengthExceededError, as_api_error
from chatbot_api.logs import configure_logging
from chatbot_api.providers.base import TokenLogprob
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.engine import Engine
from chatbot_api.providers.llama.grammar import GrammarCompiler
from chatbot_api.providers.llama.protocol import (
    EXIT_ENGINE_FAILED,
    Cancel,
    EngineSpec,
    Failed,
    Finished,
    Generate,
    Hello,
    Stats,
    Text,
    TokenLogprobWire,
    TopLogprobWire,
    WireError,
    WorkerMessage,
    encode,
    read_frame,
)
from chatbot_api.providers.llama.sequence import Done, Emission, Sequence, SequenceEvent

__all__ = ["EngineServer", "main"]

# Named, not __name__: this module runs as __main__ in the engine process.
logger = logging.getLogger("chatbot_api.providers.llama.server")

#: Threads that tokenise prompts (a long prompt takes a while; the decode loop never waits).
_TOKENIZER_THREADS = 2


def wire_error(error: ChatbotAPIError) -> WireError:
    return WireError(
        status=error.status_code,
        type=error.error_type,
        message=error.message,
        param=error.param,
        code=error.code,
        headers=error.headers,
    )


def _wire_logprobs(logprobs: tuple[TokenLogprob, ...] | None) -> list[TokenLogprobWire] | None:
    if logprobs is None:
        return None
    return [
        TokenLogprobWire(
            t.token,
            t.logprob,
            list(t.bytes),
            [TopLogprobWire(a.token, a.logprob, list(a.bytes)) for a in t.top_logprobs],
        )
        for t in logprobs
    ]


class _Connection:
    """One API worker's connection, and the requests it has in this engine."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        #: Request id -> its sequence once submitted, None while it is being prepared.
        self.requests: dict[int, Sequence | None] = {}
        self.closed = False

    def send(self, frames: list[bytes]) -> None:
        if not self.closed:
            self.writer.write(b"".join(frames))


class EngineServer:
    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.config = LlamaCppConfig.model_validate_json(spec.config)
        self.exit_status = 0
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tokenizing = ThreadPoolExecutor(_TOKENIZER_THREADS, thread_name_prefix="tokenize")
        self.engine = Engine(
            spec.model_id,
            Path(spec.path),
            self.config,
            on_events=self._events_from_decode_thread,
            on_stats=self._stats_from_decode_thread,
            on_fatal=self._fatal,
        )
        template_file = self.config.chat_template_file
        if template_file is not None:
            template: str | None = template_file.read_text(encoding="utf-8")
        else:
            template = self.engine.chat_template()
        if self.config.prompt_format == "template" and not template:
            self.engine.close()
            raise ValueError("prompt_format is 'template' but the GGUF file has no chat template")
        self.compiler = GrammarCompiler(
            self.engine.vocab,
            self.engine.n_vocab,
            budget_seconds=self.config.grammar_compile_seconds,
            cache_size=self.config.grammar_cache_size,
            queue_limit=self.config.grammar_compile_queue,
        )
        vocab = self.engine.vocab
        self.hello = Hello(
            model_id=spec.model_id,
            pid=os.getpid(),
            restarts=spec.restarts,
            n_vocab=self.engine.n_vocab,
            context_size=self.config.context_size,
            parallel=self.config.parallel,
            queue_size=self.config.queue_size,
            chat_template=template,
            bos_token=self.engine.token_text(llama_cpp.llama_vocab_bos(vocab)),
            eos_token=self.engine.token_text(llama_cpp.llama_vocab_eos(vocab)),
        )

    # -- serving ---------------------------------------------------------------------------

    async def serve(self) -> None:
        socket_path = self.spec.socket
        _remove(socket_path)  # left behind by an engine that was killed
        server = await asyncio.start_unix_server(self._connected, path=socket_path)
        os.chmod(socket_path, 0o600)
        self._loop.add_reader(sys.stdin.fileno(), self._supervisor_gone)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        # Nobody reads standard output from here on: whatever native code prints goes to
        # standard error instead of filling a pipe and blocking the process.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        logger.info(
            "engine ready",
            extra={"model": self.spec.model_id, "pid": os.getpid(), "restarts": self.spec.restarts},
        )
        try:
            await self._stopped.wait()
        finally:
            # Workers still connected are cut off when the event loop ends: asyncio.run
            # cancels their handlers, which close their connections.
            self._loop.remove_reader(sys.stdin.fileno())
            server.close()
            _remove(socket_path)
            await asyncio.to_thread(self.engine.close)
            self.compiler.close()
            self._tokenizing.shutdown(wait=False, cancel_futures=True)

    def _supervisor_gone(self) -> None:
        """Standard input closed or was written to: the supervisor wants us gone."""
        self._stopped.set()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        self._connections.add(connection)
        connection.send([encode(self.hello)])
        decoder = msgspec.msgpack.Decoder(WorkerMessage)
        try:
            while (frame := await read_frame(reader)) is not None:
                message = decoder.decode(frame)
                if isinstance(message, Generate):
                    self._generate(connection, message)
                else:
                    self._cancel(connection, message)
        except (ConnectionError, ValueError, msgspec.DecodeError) as exc:
            logger.warning("dropping a worker connection: %s", exc)
        finally:
            connection.closed = True
            self._connections.discard(connection)
            for request_id in list(connection.requests):
                self._cancel(connection, Cancel(request_id))
            writer.close()

    def _generate(self, connection: _Connection, message: Generate) -> None:
        if message.count_only:
            task = self._loop.create_task(self._count(connection, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            self.engine.reserve()
        except ChatbotAPIError as error:
            connection.send([encode(Failed(message.id, wire_error(error)))])
            return
        connection.requests[message.id] = None
        task = self._loop.create_task(self._prepare(connection, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel(self, connection: _Connection, message: Cancel) -> None:
        sequence = connection.requests.pop(message.id, None)
        if sequence is not None:
            sequence.cancelled = True
            self.engine.wake()

    async def _prepare(self, connection: _Connection, message: Generate) -> None:
        """Tokenise, check the length, compile the grammar: then hand over to the decode loop."""
        try:
            sequence = await self._sequence(connection, message)
        except Exception as exc:
            self.engine.unreserve()
            # Sent even when the request was cancelled meanwhile: its worker ignores it.
            connection.requests.pop(message.id, None)
            error = as_api_error(exc, message.request_id)
            connection.send([encode(Failed(message.id, wire_error(error)))])
            return
        if message.id not in connection.requests:
            self.engine.unreserve()  # cancelled, or its worker gone, while it was prepared
            return
        connection.requests[message.id] = sequence
        self.engine.submit(sequence)

    async def _count(self, connection: _Connection, message: Generate) -> None:
        """Answer how many tokens the prompt has; it takes no place in the batch."""
        try:
            tokens = await self._tokens(message)
        except Exception as exc:
            error = as_api_error(exc, message.request_id)
            connection.send([encode(Failed(message.id, wire_error(error)))])
            return
        connection.send([encode(Finished(message.id, "stop", len(tokens), 0))])

    async def _tokens(self, message: Generate) -> list[int]:
        return await self._loop.run_in_executor(
            self._tokenizing,
            lambda: self.engine.tokenize(
                message.prompt,
                add_special=message.add_special,
                parse_special=message.parse_special,
            ),
        )

    async def _sequence(self, connection: _Connection, message: Generate) -> Sequence:
        tokens = await self._tokens(message)
        max_tokens = self._limit(message.max_tokens, len(tokens))
        constraint = None
        if message.grammar is not None:
            constraint = await self.compiler.constraint(message.grammar)
        return Sequence(
            id=message.id,
            owner=connection,
            prompt=tokens,
            sampling=message.sampling,
            max_tokens=max_tokens,
            stops=tuple(message.stops),
            request_id=message.request_id,
            lstrip=message.lstrip,
            constraint=constraint,
            logprobs=message.logprobs,
            top_logprobs=message.top_logprobs,
        )

    def _limit(self, asked: int | None, prompt_tokens: int) -> int:
        context = self.config.context_size
        if prompt_tokens >= context or (asked is not None and prompt_tokens + asked > context):
            completion = f" and {asked} in the completion" if asked is not None else ""
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt_tokens + (asked or 0)} tokens ({prompt_tokens} in the "
                f"messages{completion}). Please reduce the length of the messages or completion.",
                param="messages",
            )
        wanted = asked if asked is not None else self.config.max_tokens
        return min(wanted, context - prompt_tokens)

    # -- from the decode thread ------------------------------------------------------------

    def _events_from_decode_thread(self, events: list[tuple[Sequence, SequenceEvent]]) -> None:
        self._loop.call_soon_threadsafe(self._deliver, events)

    def _stats_from_decode_thread(self, slots_in_use: int, queue_depth: int) -> None:
        self._loop.call_soon_threadsafe(self._broadcast, Stats(slots_in_use, queue_depth))

    def _fatal(self, error: BaseException) -> None:  # pragma: no cover - no request reaches it
        """The decode loop itself failed (never a request's doing: tests/engine_contract.py
        provokes it on the Engine): end the process, for the supervisor to start a new one."""

        def stop() -> None:
            self.exit_status = EXIT_ENGINE_FAILED
            self._stopped.set()

        self._loop.call_soon_threadsafe(stop)

    def _deliver(self, events: list[tuple[Sequence, SequenceEvent]]) -> None:
        frames: dict[_Connection, list[bytes]] = {}
        for sequence, event in events:
            connection = sequence.owner
            assert isinstance(connection, _Connection)
            if isinstance(event, Emission):
                message: Text | Finished | Failed = Text(
                    sequence.id, event.text, _wire_logprobs(event.logprobs)
                )
            else:
                connection.requests.pop(sequence.id, None)
                if isinstance(event, Done):
                    message = Finished(
                        sequence.id,
                        event.reason,
                        event.prompt_tokens,
                        event.completion_tokens,
                        event.cached_tokens,
                    )
                else:
                    message = Failed(sequence.id, wire_error(event.error))
            frames.setdefault(connection, []).append(encode(message))
        for connection, batch in frames.items():
            connection.send(batch)

    def _broadcast(self, stats: Stats) -> None:
        frame = encode(stats)
        for connection in self._connections:
            connection.send([frame])


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _serve(spec: EngineSpec) -> int:
    try:
        server = EngineServer(spec)
    except (RuntimeError, ValueError, OSError) as exc:
        # The supervisor reports the exit; this line says why.
        logger.error("the engine of model %s cannot start: %s", spec.model_id, exc)
        return 1
    await server.serve()
    return server.exit_status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = msgspec.json.decode(args[0], type=EngineSpec)
    # The supervisor decides when this process ends (see the module's docstring).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(
        Settings(
            _env_file=None,
            log_level=spec.log_level,  # type: ignore[arg-type]  # checked by Settings
            log_format=spec.log_format,  # type: ignore[arg-type]  # checked by Settings
            log_file=Path(spec.log_file) if spec.log_file else None,
            workers=1,  # one file of its own, whatever the server's worker count
        )
    )
    return asyncio.run(_serve(spec))


if __name__ == "__main__":
    sys.exit(main())
