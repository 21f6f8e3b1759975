"""An ``openai`` model served by several deployments: the spread of requests under each
routing strategy, cooldown and recovery, retries before the first byte (and none after it),
fallbacks, and full fleets answered at once. The deployments are replicas of the suite's own
(``tests/fleet.py``); which one served a request is read from ``x-chatbot-deployment``."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatbot_api.app import create_app
from chatbot_api.providers.registry import ModelsFileError
from tests.conftest import ServerFactory, make_settings
from tests.fleet import Replica, fleet
from tests.servers import LiveServer, free_port

HELLO = [{"role": "user", "content": "hello fleet"}]


@pytest.fixture
def replicas() -> Iterator[dict[str, Replica]]:
    with fleet("a", "b", "c") as running:
        yield running


def deployments(*replicas: Replica, **keys: Any) -> str:
    """``[[deployments]]`` tables for ``replicas``, named after them, with ``keys`` on each."""
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
    return "".join(
        f'[[models.fleet.deployments]]\nname = "{r.name}"\nbase_url = "{r.base_url}"\n'
        f'upstream_model = "up-{r.name}"\n{extra}'
        for r in replicas
    )


def front(start_server: ServerFactory, tmp_path: Path, toml: str) -> LiveServer:
    models = tmp_path / "fleet.toml"
    models.write_text(toml)
    return start_server(models_file=models)


def ask(server: LiveServer, model: str = "fleet", **body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": model, "messages": HELLO, **body},
        timeout=30,
    )


def served(server: LiveServer, times: int, model: str = "fleet") -> Counter[str]:
    """Deployments that answered ``times`` requests, one after another, all 200."""
    counts: Counter[str] = Counter()
    for _ in range(times):
        answer = ask(server, model)
        assert answer.status_code == 200, answer.text
        counts[answer.headers["x-chatbot-deployment"]] += 1
    return counts


def metric(server: LiveServer, name: str, **labels: str) -> float:
    """A sample's value from ``/metrics`` (0 when absent)."""
    text = httpx.get(f"{server.base_url}/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and wanted in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def counted(server: LiveServer, name: str, **labels: str) -> Callable[[], float]:
    """How much a counter grows from now on: the metrics are the test process's, shared by
    every server a test starts, so a count is read as a difference."""
    start = metric(server, name, **labels)
    return lambda: metric(server, name, **labels) - start


HEADER = '[models.fleet]\nprovider = "openai"\n'


def test_one_base_url_is_a_fleet_of_one(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    server = front(
        start_server,
        tmp_path,
        f'{HEADER}base_url = "{replicas["a"].base_url}"\nupstream_model = "up-a"\n',
    )

    answer = ask(server)

    assert answer.status_code == 200
    assert answer.json()["model"] == "fleet"  # ours, not the upstream's name
    assert answer.json()["choices"][0]["message"]["content"] == "a: hello fleet"
    assert answer.headers["x-chatbot-deployment"] == "fleet/1"
    assert replicas["a"].bodies[0]["model"] == "up-a"


def test_least_busy_sends_more_to_the_deployment_that_finishes_sooner(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].delay = 0.3
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"], replicas["b"]))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: ask(server), range(48)))

    assert all(answer.status_code == 200 for answer in answers)
    counts = Counter(answer.headers["x-chatbot-deployment"] for answer in answers)
    assert counts["b"] > 2 * counts["a"]
    assert replicas["a"].hits == counts["a"]  # nothing retried


def test_least_busy_spreads_sequential_requests_over_every_deployment(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    server = front(start_server, tmp_path, HEADER + deployments(*replicas.values()))

    counts = served(server, 45)

    assert set(counts) == {"a", "b", "c"}
    assert min(counts.values()) >= 5  # an even spread gives 15 each


def test_weighted_routing_follows_the_weights(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    toml = (
        f'{HEADER}routing = "weighted"\n'
        + deployments(replicas["a"], weight=1)
        + deployments(replicas["b"], weight=4)
    )
    server = front(start_server, tmp_path, toml)

    counts = served(server, 100)

    # 80 expected on b; the bounds are some four standard deviations out.
    assert 64 <= counts["b"] <= 96
    assert counts["a"] + counts["b"] == 100


def test_latency_routing_settles_on_the_fastest_deployment(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].delay = 0.15
    toml = f'{HEADER}routing = "latency"\n' + deployments(replicas["a"], replicas["b"])
    server = front(start_server, tmp_path, toml)

    counts = served(server, 20)

    assert counts == {"a": 1, "b": 19}  # each measured once, then the faster one only


def test_a_deployment_that_is_down_is_skipped_and_cooled_down(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    down = f'[[models.fleet.deployments]]\nname = "down"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n'
    toml = f"{HEADER}allowed_fails = 2\ncooldown = 60\n" + down + deployments(replicas["a"])
    server = front(start_server, tmp_path, toml)
    cooldowns = counted(server, "chatbot_upstream_cooldowns_total", deployment="down")
    failures = counted(
        server, "chatbot_upstream_failures_total", deployment="down", kind="unreachable"
    )

    counts = served(server, 20)  # every one of them answered, by a

    assert counts == {"a": 20}
    assert cooldowns() == 1
    assert failures() == 2  # then it rested: no request was sent its way
    assert httpx.get(f"{server.base_url}/ready").json()["unavailable"] == {}


def test_a_model_whose_every_deployment_is_down_answers_at_once_and_shows_in_ready(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    toml = (
        f"{HEADER}allowed_fails = 1\ncooldown = 60\nmax_retries = 0\n"
        f'base_url = "http://127.0.0.1:{free_port()}/v1"\n'
    )
    server = front(start_server, tmp_path, toml)

    first = ask(server)
    started = time.monotonic()
    second = ask(server)

    assert first.status_code == 502
    assert first.json()["error"]["code"] == "upstream_error"
    assert second.status_code == 503  # cooling down: not even tried
    assert time.monotonic() - started < 5
    assert int(second.headers["retry-after"]) > 50
    assert "cooling down" in second.json()["error"]["message"]
    ready = httpx.get(f"{server.base_url}/ready")
    assert ready.status_code == 200  # the server itself is fine
    assert ready.json()["unavailable"] == {"fleet": "none of its 1 deployment(s) can serve now"}


def test_a_429_with_retry_after_keeps_the_deployment_out_for_that_long(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "rate-limited"
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"], replicas["b"]))

    counts = served(server, 20)

    assert replicas["a"].hits <= 1  # asked once at most, then left alone for 30 s
    assert counts == {"b": 20}


def test_a_lone_deployment_that_asks_us_to_wait_is_not_asked_again_before_then(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "rate-limited"
    server = front(start_server, tmp_path, HEADER + deployments(replicas["a"]))

    first = ask(server)
    second = ask(server)

    assert first.status_code == 429
    assert first.headers["retry-after"] == "30"
    assert second.status_code == 429
    assert 1 <= int(second.headers["retry-after"]) <= 30
    assert replicas["a"].hits == 1


def test_a_cooled_deployment_gets_one_trial_and_then_its_share_again(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    a = replicas["a"]
    a.behaviour = "fail"
    toml = f"{HEADER}allowed_fails = 2\ncooldown = 2\n" + deployments(a, replicas["b"])
    server = front(start_server, tmp_path, toml)
    cooldowns = counted(server, "chatbot_upstream_cooldowns_total", deployment="a")
    for _ in range(100):  # least_busy picks a or b at random while neither is busy
        served(server, 1)
        if a.hits == 2:
            break
    served(server, 6)
    assert a.hits == 2  # two failures, then cooled down

    def trial() -> None:
        """Wait out the cooldown, then ask until the half-open deployment gets its trial."""
        time.sleep(2.1)
        hits = a.hits
        while a.hits == hits:
            served(server, 1)

    trial()
    served(server, 6)  # well within the new cooldown
    assert a.hits == 3  # one trial, which failed: cooled down again

    a.behaviour = "ok"
    trial()
    counts = served(server, 24)
    assert counts["a"] >= 4  # its trial answered: back in the rotation (12 expected)
    assert cooldowns() == 2


def test_a_stream_is_retried_on_another_deployment_before_its_first_byte(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "fail"
    toml = f'{HEADER}routing = "weighted"\n' + deployments(replicas["a"], weight=1000)
    toml += deployments(replicas["b"], weight=0.001)
    server = front(start_server, tmp_path, toml)

    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json={"model": "fleet", "messages": HELLO, "stream": True},
    ) as answer:
        data = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert answer.status_code == 200
    assert answer.headers["x-chatbot-deployment"] == "b"
    assert replicas["a"].hits == 1
    assert data[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for chunk in map(json.loads, data[:-1])
        for choice in chunk["choices"]
    )
    assert text.strip() == "b: hello fleet"
    assert all(json.loads(item)["model"] == "fleet" for item in data[:-1])
    assert all(json.loads(item)["choices"] for item in data[:-1])  # no usage: not asked for


def test_a_stream_that_dies_after_its_first_byte_is_not_retried(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "die-mid-stream"
    toml = f"{HEADER}max_retries = 2\n" + deployments(replicas["a"])
    server = front(start_server, tmp_path, toml)
    dropped = counted(server, "chatbot_upstream_failures_total", deployment="a", kind="dropped")

    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/chat/completions",
        json={"model": "fleet", "messages": HELLO, "stream": True},
        timeout=10,
    ) as answer:
        data = [line[6:] for line in answer.iter_lines() if line.startswith("data: ")]

    assert answer.status_code == 200
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["error"]["code"] == "upstream_error"
    assert replicas["a"].hits == 1
    assert dropped() == 1


def test_fallbacks_serve_when_no_deployment_can(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "fail"
    toml = (
        f'{HEADER}max_retries = 1\nfallbacks = ["spare"]\n'
        + deployments(replicas["a"])
        + f'[models.spare]\nprovider = "openai"\nbase_url = "{replicas["c"].base_url}"\n'
    )
    server = front(start_server, tmp_path, toml)

    answer = ask(server)
    streamed = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "fleet", "messages": HELLO, "stream": True},
    )

    assert answer.status_code == 200
    assert answer.json()["model"] == "spare"
    assert answer.headers["x-chatbot-deployment"] == "spare/1"
    assert answer.json()["choices"][0]["message"]["content"] == "c: hello fleet"
    assert replicas["c"].bodies[0]["model"] == "spare"
    assert streamed.headers["x-chatbot-deployment"] == "spare/1"
    assert '"model":"spare"' in streamed.text.replace(" ", "")


def test_a_prompt_too_long_goes_to_the_context_window_fallback(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "too-long"
    toml = (
        f'{HEADER}fallbacks = ["spare"]\ncontext_window_fallbacks = ["long"]\n'
        + deployments(replicas["a"])
        + f'[models.spare]\nprovider = "openai"\nbase_url = "{replicas["b"].base_url}"\n'
        + f'[models.long]\nprovider = "openai"\nbase_url = "{replicas["c"].base_url}"\n'
    )
    server = front(start_server, tmp_path, toml)

    answer = ask(server)

    assert answer.status_code == 200
    assert answer.json()["model"] == "long"
    assert replicas["a"].hits == 1  # a refusal of the request is not retried
    assert replicas["b"].hits == 0


def test_a_full_fleet_answers_503_with_retry_after_at_once(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].delay = 1.0
    toml = HEADER + deployments(replicas["a"], max_concurrency=1)
    server = front(start_server, tmp_path, toml)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(ask, server)
        while replicas["a"].hits == 0:
            time.sleep(0.01)
        started = time.monotonic()
        refused = ask(server)
        waited = time.monotonic() - started

    assert slow.result().status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "server_overloaded"
    assert waited < 0.9  # not queued behind the running request
    assert replicas["a"].hits == 1


def test_a_deployment_at_its_rpm_is_skipped_until_the_minute_turns(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    toml = HEADER + deployments(replicas["a"], rpm=2)
    server = front(start_server, tmp_path, toml)

    answers = [ask(server) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert 1 <= int(answers[2].headers["retry-after"]) <= 60
    assert replicas["a"].hits == 2


def test_the_access_log_names_the_deployment(
    start_server: ServerFactory,
    tmp_path: Path,
    replicas: dict[str, Replica],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = front(start_server, tmp_path, HEADER + deployments(replicas["b"]))

    assert ask(server).status_code == 200

    access = [r for r in caplog.records if r.name == "chatbot_api.access"]
    assert access[-1].deployment == "b"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            'base_url = "http://127.0.0.1:9/v1"\n[[models.fleet.deployments]]\n'
            'base_url = "http://127.0.0.1:9/v1"\n',
            "'base_url' belongs on each of the model's deployments when it lists them",
        ),
        ('routing = "fastest"\n', "routing"),
        ("", "give the model a base_url, or a list of deployments"),
        (
            '[[models.fleet.deployments]]\nname = "x"\nbase_url = "http://127.0.0.1:9/v1"\n'
            '[[models.fleet.deployments]]\nname = "x"\nbase_url = "http://127.0.0.1:8/v1"\n',
            "two deployments are named 'x'",
        ),
        (
            'base_url = "http://127.0.0.1:9/v1"\nfallbacks = ["echo"]\n',
            "key 'fallbacks': 'echo': its provider is 'echo'; fallbacks are 'openai' models",
        ),
        (
            'base_url = "http://127.0.0.1:9/v1"\ncontext_window_fallbacks = ["nowhere"]\n',
            "key 'context_window_fallbacks': 'nowhere': no model has that id",
        ),
        (
            'base_url = "http://127.0.0.1:9/v1"\nfallbacks = ["fleet"]\n',
            "'fleet': a model cannot be its own fallback",
        ),
        ('base_url = "http://127.0.0.1:9/v1"\ncooldown = inf\n', "cooldown"),
        (
            '[[models.fleet.deployments]]\nbase_url = "http://127.0.0.1:9/v1"\nweight = inf\n',
            "weight",
        ),
    ],
)
@pytest.mark.anyio
async def test_a_fleet_that_cannot_work_stops_the_start_saying_why(
    data_dir: Path, tmp_path: Path, toml: str, message: str
) -> None:
    models = tmp_path / "fleet.toml"
    models.write_text(HEADER + toml)
    settings = make_settings(
        models_file=models,
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'fleet.db'}",
    )

    async def start() -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises((ModelsFileError, ValueError)) as caught:
        await start()

    assert message in str(caught.value)


def test_a_deployment_gets_its_place_back_however_its_streams_end(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    """Streams read to the end, left at their first byte, and cut part-way each give back the
    deployment's one place: the next request is served, and nothing is left in flight."""
    a = replicas["a"]
    a.delay = 0.05
    server = front(start_server, tmp_path, HEADER + deployments(a, max_concurrency=1))
    body = {"model": "fleet", "messages": HELLO, "stream": True}
    url = f"{server.base_url}/v1/chat/completions"

    for leave_after in (None, 0, 3):
        with httpx.stream("POST", url, json=body, timeout=10) as answer:
            assert answer.status_code == 200
            for number, _ in enumerate(answer.iter_lines()):
                if number == leave_after:
                    break
        deadline = time.monotonic() + 5
        while (next_one := ask(server)).status_code == 503:
            assert time.monotonic() < deadline, "the deployment's place was never given back"
            time.sleep(0.05)
        assert next_one.status_code == 200
    assert metric(server, "chatbot_upstream_in_flight", deployment="a") == 0


def test_the_responses_api_is_served_by_the_fleet_and_its_fallbacks(
    start_server: ServerFactory, tmp_path: Path, replicas: dict[str, Replica]
) -> None:
    replicas["a"].behaviour = "fail"
    toml = (
        f'{HEADER}max_retries = 0\nfallbacks = ["spare"]\n'
        + deployments(replicas["a"])
        + f'[models.spare]\nprovider = "openai"\nbase_url = "{replicas["b"].base_url}"\n'
    )
    server = front(start_server, tmp_path, toml)
    url = f"{server.base_url}/v1/responses"

    answer = httpx.post(url, json={"model": "fleet", "input": "hello fleet"}, timeout=30)
    streamed = httpx.post(
        url, json={"model": "fleet", "input": "hello fleet", "stream": True}, timeout=30
    )

    assert answer.status_code == 200
    assert answer.json()["output"][0]["content"][0]["text"] == "b: hello fleet"
    assert answer.json()["usage"]["total_tokens"] == 8
    assert streamed.status_code == 200
    assert "event: response.completed" in streamed.text
    assert "b: " in streamed.text
    assert replicas["a"].hits == 2
