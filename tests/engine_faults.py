"""Run by ``test_engine.py`` in a process of its own: an engine whose event delivery fails.

The engine hands each decode step's events to its process (which writes them to the workers'
connections). Should that ever raise, nothing a request did is to blame and nothing further
can be trusted: every sequence must fail with 503 and the process must be told to stop, so
that its supervisor starts a fresh engine. Prints what the engine reported, as JSON.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from chatbot_api.providers.llama.bundled import prepare_bundled_model
from chatbot_api.providers.llama.config import LlamaCppConfig
from chatbot_api.providers.llama.engine import Engine
from chatbot_api.providers.llama.sampling import SamplingParams
from chatbot_api.providers.llama.sequence import Failure, Sequence, SequenceEvent


def main(data_dir: Path) -> None:
    failures: list[str | None] = []
    fatal = threading.Event()
    deliveries = 0

    def deliver(events: list[tuple[Sequence, SequenceEvent]]) -> None:
        nonlocal deliveries
        deliveries += 1
        if deliveries == 1:
            raise ConnectionResetError("the engine process lost its workers' connections")
        failures.extend(e.error.code for _, e in events if isinstance(e, Failure))

    engine = Engine(
        "faulty",
        prepare_bundled_model(data_dir, show_progress=False),
        LlamaCppConfig(parallel=2, threads=1, context_size=256),
        on_events=deliver,
        on_stats=lambda decoding, waiting: None,
        on_fatal=lambda error: fatal.set(),
    )
    params = SamplingParams(
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        repeat_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        seed=1,
        logit_bias={},
        logprobs=False,
        top_logprobs=0,
    )
    prompt = engine.tokenize("Tell me a story.", add_special=True, parse_special=False)
    for number in range(2):
        engine.reserve()
        engine.submit(
            Sequence(id=number, owner=None, prompt=prompt, params=params, max_tokens=50, stops=())
        )
    fatal.wait(60)
    engine.close()
    print(json.dumps({"failures": failures, "fatal": fatal.is_set()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
