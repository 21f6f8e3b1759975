"""Run by ``test_engine.py`` in a process of its own: the decode loop's promises, kept where no
HTTP request can lead.

The engine process builds an :class:`Engine`, reserves, submits and cancels sequences, and
hands each step's events to its workers. Here a script plays that process and breaks what it
can break from outside the loop: the hand-over itself, a batch llama.cpp refuses, a sequence
whose sampling raises, a queued sequence whose client left, a request after close. Prints
what each scenario saw, as one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llguidance
from llguidance.llamacpp import lltokenizer_from_vocab

from chatbot_api.errors import ChatbotAPIError
from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.engine import Engine
from chatbot_api.providers.llama.grammar import Constraint
from chatbot_api.providers.llama.protocol import Sampling
from chatbot_api.providers.llama.sequence import Done, Emission, Failure, Sequence, SequenceEvent

GREEDY = Sampling(
    temperature=0.0,
    top_p=1.0,
    top_k=0,
    min_p=0.0,
    repeat_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    seed=1,
    logit_bias={},
)


class Witness:
    """The engine's events, as the engine process would hand them to its workers."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.fail_first = fail_first
        self.events: dict[int, list[str]] = {}
        self.fatal = threading.Event()
        self.ended = threading.Condition()

    def deliver(self, events: list[tuple[Sequence, SequenceEvent]]) -> None:
        if self.fail_first:
            self.fail_first = False
            raise ConnectionResetError("the engine process lost its workers' connections")
        with self.ended:
            for sequence, event in events:
                self.events.setdefault(sequence.id, []).append(_describe(event))
            self.ended.notify_all()

    def wait_for_end(self, *ids: int) -> None:
        def ended() -> bool:
            return all(self.events.get(i, [""])[-1].startswith(("done", "failed")) for i in ids)

        with self.ended:
            assert self.ended.wait_for(ended, timeout=60), self.events


def _describe(event: SequenceEvent) -> str:
    if isinstance(event, Emission):
        return "text"
    if isinstance(event, Done):
        return f"done:{event.reason}"
    assert isinstance(event, Failure)
    return f"failed:{event.error.status_code}:{event.error.code}"


def _engine(data_dir: Path, witness: Witness, **config: Any) -> Engine:
    return Engine(
        "contract",
        prepare_bundled_model(data_dir, show_progress=False),
        LlamaCppConfig(threads=1, context_size=256, **config),
        on_events=witness.deliver,
        on_stats=lambda decoding, waiting: None,
        on_fatal=lambda error: witness.fatal.set(),
    )


def _submit(engine: Engine, number: int, prompt: list[int], **fields: Any) -> Sequence:
    sequence = Sequence(
        id=number, owner=None, prompt=prompt, sampling=GREEDY, max_tokens=20, stops=(), **fields
    )
    engine.reserve()
    engine.submit(sequence)
    return sequence


def _story(engine: Engine) -> list[int]:
    return engine.tokenize("Tell me a story.", add_special=True, parse_special=False)


def delivery_fails(data_dir: Path) -> dict[str, Any]:
    """The hand-over raises: every sequence fails with 503 and the process is told to stop."""
    witness = Witness(fail_first=True)
    engine = _engine(data_dir, witness, parallel=2)
    for number in range(2):
        _submit(engine, number, _story(engine))
    witness.fatal.wait(60)
    engine.close()
    return {"events": witness.events, "fatal": witness.fatal.is_set()}


def batch_refused(data_dir: Path) -> dict[str, Any]:
    """llama.cpp refuses a batch (a token past the vocabulary): its sequence fails with 503;
    the engine serves the next one."""
    witness = Witness()
    engine = _engine(data_dir, witness, parallel=1)
    _submit(engine, 0, [engine.n_vocab + 5])
    witness.wait_for_end(0)
    _submit(engine, 1, _story(engine))
    witness.wait_for_end(1)
    engine.close()
    return {"events": witness.events, "fatal": witness.fatal.is_set()}


def sampling_raises(data_dir: Path) -> dict[str, Any]:
    """One sequence's sampling raises (its grammar was built for another vocabulary): it fails
    with 500; the sequence decoded beside it finishes."""
    witness = Witness()
    engine = _engine(data_dir, witness, parallel=2)
    grammar = llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}')
    matcher = llguidance.LLMatcher(lltokenizer_from_vocab(engine.vocab), grammar, log_level=0)
    misfit = Constraint(matcher, n_vocab=1000)
    _submit(engine, 0, _story(engine), constraint=misfit)
    _submit(engine, 1, _story(engine))
    witness.wait_for_end(0, 1)
    engine.close()
    return {"events": witness.events, "fatal": witness.fatal.is_set()}


def cancelled_in_line(data_dir: Path) -> dict[str, Any]:
    """A queued sequence whose client left is never decoded; the one behind it is."""
    witness = Witness()
    engine = _engine(data_dir, witness, parallel=1)
    _submit(engine, 0, _story(engine))
    _submit(engine, 1, _story(engine)).cancelled = True
    _submit(engine, 2, _story(engine))
    witness.wait_for_end(0, 2)
    engine.close()
    return {"events": witness.events, "fatal": witness.fatal.is_set()}


def after_close(data_dir: Path) -> dict[str, Any]:
    """A closed engine refuses a new request with 503 at once."""
    engine = _engine(data_dir, Witness(), parallel=1)
    engine.close()
    try:
        engine.reserve()
    except ChatbotAPIError as error:
        return {"refused": f"{error.status_code}:{error.code}"}
    return {"refused": None}


SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "delivery fails": delivery_fails,
    "batch refused": batch_refused,
    "sampling raises": sampling_raises,
    "cancelled in line": cancelled_in_line,
    "after close": after_close,
}

if __name__ == "__main__":
    print(json.dumps(SCENARIOS[sys.argv[1]](Path(sys.argv[2]))))
