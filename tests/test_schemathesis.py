"""schemathesis against our own OpenAPI document: every operation, on a real server.

For each operation schemathesis sends the documented examples, its coverage cases (edge and
invalid values, missing parameters, wrong methods and media types) and a bounded number of
generated requests, and checks that no answer is a 5xx and that every status, media type and
body is one the document declares for it. The server runs three ways: open (no key at all),
and with a master key, called once with it and once without any key (401, then 429 once the
address has failed too often).

The document is the one ``create_app`` serves at ``/openapi.json``; it is read from the app
when the module is collected, since schemathesis makes one test per operation then (its
fixture-loaded schemas do not work with pytest 9, whose items have no ``_nodeid``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chatbot_api.app import create_app
from tests.clients import MASTER
from tests.conftest import make_settings
from tests.livekit_fake import LIVEKIT_KEY, LIVEKIT_SECRET, FakeLiveKit
from tests.servers import LiveServer

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            # Generated requests per operation, beyond the examples and coverage cases: the
            # whole module stays under a minute on two cores.
            "max-examples": 20,
            # Hypothesis would keep failing examples in .hypothesis/ in the working tree.
            "database": "none",
        },
        # Generating a chat request takes a while on a busy machine; that check measures the
        # generator, not the API.
        "suppress-health-check": ["too_slow"],
    }
)
SCHEMA = schemathesis.openapi.from_dict(create_app(make_settings()).openapi(), config=CONFIG)


@dataclass(frozen=True)
class Target:
    base_url: str
    headers: dict[str, str]


@pytest.fixture(scope="module", params=["open", "master key", "no key"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A server of the mode's own, serving the built-in ``echo`` model, with voice sessions
    on a fake LiveKit (a 503 for want of settings would be a server error to schemathesis)."""
    mode: str = request.param
    data_dir = tmp_path_factory.mktemp("schemathesis")
    with LiveServer(FakeLiveKit().app()) as livekit:
        settings = make_settings(
            master_key=None if mode == "open" else MASTER,
            data_dir=data_dir,
            database_url=f"sqlite+aiosqlite:///{data_dir / 'api.db'}",
            livekit_url=livekit.base_url,
            livekit_api_key=LIVEKIT_KEY,
            livekit_api_secret=LIVEKIT_SECRET,
        )
        with LiveServer(create_app(settings)) as server:
            headers = {"Authorization": f"Bearer {MASTER}"} if mode == "master key" else {}
            yield Target(server.base_url, headers)


def test_the_served_document_is_the_one_tested(target: Target) -> None:
    served = httpx.get(f"{target.base_url}/openapi.json").json()

    assert served == SCHEMA.raw_schema


@SCHEMA.parametrize()
def test_every_answer_is_documented(case: Case[Any], target: Target) -> None:
    case.call_and_validate(base_url=target.base_url, headers=target.headers, checks=CHECKS)
