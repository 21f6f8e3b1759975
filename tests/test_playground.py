"""The playground in a real browser (Debian's chromium, driven by Playwright) against
``chatbot-api serve`` in a process of its own, with authentication on as it is when exposed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.servers import ServerProcess, clean_env, logged_messages

CHROMIUM = "/usr/bin/chromium"
MASTER_KEY = "sk-playground-master-key-0123456789"
MODELS = """
[models."slow-echo"]
provider = "echo"
token_delay = 0.12
"""
DISCONNECTED = "client disconnected; generation stopped"


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    models = tmp / "models.toml"
    models.write_text(MODELS)
    return clean_env(
        CHATBOT_MASTER_KEY=MASTER_KEY,
        CHATBOT_MODELS_FILE=str(models),
        CHATBOT_BUNDLED_MODEL="false",
        CHATBOT_BUNDLED_CHAT_MODEL="false",
        CHATBOT_DATA_DIR=str(tmp / "data"),
        **extra,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("playground")
    with ServerProcess(_env(tmp), tmp / "output.txt") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert shutil.which(CHROMIUM), "the browser tests need Debian's chromium (.ci/run installs it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser profile (no storage) for each test."""
    context = browser.new_context()
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    yield opened
    context.close()
    # A script error or a CSP violation ("Refused to ...") shows in the console: the page
    # must have none. The browser's own note of each failed request is expected.
    assert [e for e in errors if not e.startswith("Failed to load resource")] == []


def _sign_in(page: Page, server: ServerProcess, key: str = MASTER_KEY) -> None:
    page.goto(f"{server.base_url}/")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-save")


def _ready(page: Page) -> None:
    expect(page.locator("body")).to_have_attribute("data-ready", "true")


def _send(page: Page, text: str) -> None:
    page.fill("#input", text)
    page.press("#input", "Enter")


def _open(page: Page, server: ServerProcess, model: str) -> None:
    """Signed in with the master key, the page ready, ``model`` picked."""
    _sign_in(page, server)
    _ready(page)
    page.select_option("#model", model)


def _exchange(page: Page, text: str) -> None:
    """Send ``text`` and wait for the reply to finish (its usage shown)."""
    _send(page, text)
    expect(page.locator(".message.assistant .stats").last).to_contain_text("out tokens")


def _last_reply(page: Page) -> str:
    return page.locator(".message.assistant .body").last.inner_text()


def _conversations(server: ServerProcess) -> list[dict[str, object]]:
    listed = httpx.get(
        f"{server.base_url}/v1/conversations",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    )
    assert listed.status_code == 200
    data: list[dict[str, object]] = listed.json()["data"]
    return data


def test_the_page_is_served_under_a_strict_content_security_policy(
    served: ServerProcess,
) -> None:
    for path in ("/", "/playground"):
        page = httpx.get(f"{served.base_url}{path}")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "connect-src 'self'" in policy
    script = httpx.get(f"{served.base_url}/playground/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    # The API itself stays closed to other origins.
    preflight = httpx.options(
        f"{served.base_url}/v1/models",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    # Nothing escapes the static folder.
    escape = httpx.get(f"{served.base_url}/playground/static/../../config.py")
    assert escape.status_code == 404


def test_a_message_streams_back_word_by_word(page: Page, served: ServerProcess) -> None:
    _open(page, served, "slow-echo")
    # Every state the reply goes through, as the page shows it.
    page.evaluate(
        """() => {
            window.seen = [];
            new MutationObserver(() => {
                const replies = document.querySelectorAll(".message.assistant .body");
                const text = replies.length ? replies[replies.length - 1].textContent : "";
                if (text && text !== window.seen.at(-1)) window.seen.push(text);
            }).observe(document.getElementById("messages"),
                       {childList: true, subtree: true, characterData: true});
        }"""
    )
    message = "one two three four five six seven"
    _send(page, message)

    expect(page.locator(".message.assistant .stats").last).to_contain_text("tokens/s")
    assert _last_reply(page) == message
    seen: list[str] = page.evaluate("window.seen")
    assert len(seen) >= 4, seen  # it grew in steps, not all at once
    assert all(message.startswith(state.strip()) for state in seen)
    stats = page.locator(".message.assistant .stats").last.inner_text()
    assert "first token" in stats
    assert "7 out tokens" in stats
    # The key lives in this tab's sessionStorage, and nowhere else.
    assert page.evaluate("sessionStorage.getItem('chatbot-api.key')") == MASTER_KEY
    assert MASTER_KEY not in page.evaluate("JSON.stringify(localStorage)")
    assert MASTER_KEY not in page.url


def test_stop_ends_the_stream_and_the_generation(page: Page, served: ServerProcess) -> None:
    _open(page, served, "slow-echo")
    long_message = " ".join(f"word{i}" for i in range(60))  # about seven seconds of reply
    before = logged_messages(served.output.read_text()).count(DISCONNECTED)
    _send(page, long_message)
    expect(page.locator(".message.assistant .body").last).to_contain_text("word2")
    page.click("#stop")

    stats = page.locator(".message.assistant .stats").last
    expect(stats).to_contain_text("stopped by you")
    expect(page.locator("#send")).to_be_visible()
    assert len(_last_reply(page).split()) < 60
    # The server saw the client go and stopped generating.
    deadline = time.monotonic() + 10
    while logged_messages(served.output.read_text()).count(DISCONNECTED) == before:
        assert time.monotonic() < deadline, "the server never logged the disconnect"
        time.sleep(0.1)


def test_a_conversation_survives_a_reload_and_follows_the_key(
    browser: Browser, page: Page, served: ServerProcess
) -> None:
    _open(page, served, "echo")
    _exchange(page, "remember the lighthouse")

    page.reload()  # the key stays with the tab: no question asked again
    _ready(page)
    entry = page.locator("#conversations li", has_text="remember the lighthouse")
    expect(entry).to_have_count(1)
    entry.locator(".title").click()
    expect(page.locator(".message.user .body")).to_have_text(["remember the lighthouse"])
    expect(page.locator(".message.assistant .body")).to_have_text(["remember the lighthouse"])

    # Another browser with the same key finds it too: it is kept on the server.
    other = browser.new_context().new_page()
    _sign_in(other, served)
    _ready(other)
    expect(other.locator("#conversations li", has_text="remember the lighthouse")).to_have_count(1)
    other.context.close()


def test_rename_and_delete_a_conversation(page: Page, served: ServerProcess) -> None:
    _open(page, served, "echo")
    _exchange(page, "a chat to rename")
    entry = page.locator("#conversations li", has_text="a chat to rename")
    entry.get_by_role("button", name="Rename", exact=True).click()
    page.fill("#conversations input", "Renamed chat")
    page.press("#conversations input", "Enter")
    expect(page.locator("#conversations li", has_text="Renamed chat")).to_have_count(1)
    [renamed] = [c for c in _conversations(served) if c["metadata"] == {"title": "Renamed chat"}]

    entry = page.locator("#conversations li", has_text="Renamed chat")
    entry.get_by_role("button", name="Delete", exact=True).click()  # arms it
    expect(entry.get_by_role("button", name="Delete", exact=True)).to_have_text("Delete?")
    entry.get_by_role("button", name="Delete", exact=True).click()
    expect(page.locator("#conversations li", has_text="Renamed chat")).to_have_count(0)
    assert renamed["id"] not in [c["id"] for c in _conversations(served)]
    expect(page.locator(".message")).to_have_count(0)  # the open chat went with it


def test_regenerate_replaces_the_last_reply_here_and_on_the_server(
    page: Page, served: ServerProcess
) -> None:
    _open(page, served, "echo")
    _exchange(page, "say it twice")
    # The old reply, marked: until it is gone and its successor has its stats, the
    # regeneration is under way (its stats already read "out tokens").
    page.locator(".message.assistant").last.evaluate("reply => { reply.dataset.old = 'yes'; }")
    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator(".message.assistant[data-old]")).to_have_count(0)
    expect(page.locator(".message.assistant .stats").last).to_contain_text("out tokens")
    expect(page.locator(".message.user .body")).to_have_text(["say it twice"])
    expect(page.locator(".message.assistant .body")).to_have_text(["say it twice"])
    titled = [c for c in _conversations(served) if c["metadata"] == {"title": "say it twice"}]
    [conversation] = titled
    items = httpx.get(
        f"{served.base_url}/v1/conversations/{conversation['id']}/items",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    ).json()["data"]
    assert [item["role"] for item in items] == ["assistant", "user"]  # one exchange, not two


def test_regenerate_after_stop_sends_the_stopped_message_again(
    page: Page, served: ServerProcess
) -> None:
    _open(page, served, "echo")
    _exchange(page, "alpha")
    page.select_option("#model", "slow-echo")
    stopped = " ".join(f"w{i}" for i in range(12))
    _send(page, stopped)
    expect(page.locator(".message.assistant .body").last).to_contain_text("w1")
    page.click("#stop")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("stopped by you")

    page.get_by_role("button", name="Regenerate").click()
    expect(page.locator(".message.assistant .stats").last).to_contain_text("out tokens")
    expect(page.locator(".message.user .body")).to_have_text(["alpha", stopped])
    expect(page.locator(".message.assistant .body")).to_have_text(["alpha", stopped])
    [conversation] = [c for c in _conversations(served) if c["metadata"] == {"title": "alpha"}]
    items = httpx.get(
        f"{served.base_url}/v1/conversations/{conversation['id']}/items",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        params={"order": "asc"},
    ).json()["data"]
    texts = [(i["role"], "".join(p["text"] for p in i["content"])) for i in items]
    assert texts == [
        ("user", "alpha"),
        ("assistant", "alpha"),
        ("user", stopped),
        ("assistant", stopped),
    ]


def test_a_reply_the_markdown_renderer_cannot_take_is_shown_as_text(
    page: Page, served: ServerProcess
) -> None:
    _open(page, served, "echo")
    nested = ">" * 3000 + " deep"  # a quote nested thousands deep
    first = "a" * 59 + "\U0001f600 and then some"  # the title is cut after the emoji, not in it
    _exchange(page, first)
    _exchange(page, nested)
    _send(page, "after")
    expect(page.locator(".message.assistant .body").last).to_have_text("after")
    assert page.locator(".message.assistant .body").nth(1).inner_text() == nested
    expect(page.locator("#conversations li.current .title")).to_have_text("a" * 59 + "\U0001f600")
    # Opened again from the server, every message is there.
    page.reload()
    _ready(page)
    page.locator("#conversations li .title", has_text="a" * 59).click()
    expect(page.locator(".message.assistant .body")).to_have_count(3)
    expect(page.locator(".message.assistant .body").last).to_have_text("after")


def test_a_conversation_deleted_elsewhere_is_a_clear_404(page: Page, served: ServerProcess) -> None:
    created = httpx.post(
        f"{served.base_url}/v1/conversations",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"metadata": {"title": "soon gone"}},
    ).json()
    _sign_in(page, served)
    _ready(page)
    httpx.delete(
        f"{served.base_url}/v1/conversations/{created['id']}",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    )
    page.locator("#conversations li", has_text="soon gone").locator(".title").click()
    expect(page.locator("#banner")).to_contain_text("Not found: No conversation found")


def test_a_bad_key_shows_the_401_message(page: Page, served: ServerProcess) -> None:
    _sign_in(page, served, key="sk-not-a-key-of-this-server")
    banner = page.locator("#banner")
    expect(banner).to_contain_text("The server refused the API key")
    expect(page.locator("#key-dialog")).to_be_visible()  # asked again
    # A good key then works without a reload.
    page.fill("#key-input", MASTER_KEY)
    page.click("#key-save")
    _ready(page)
    expect(banner).to_be_hidden()


def test_a_rate_limited_key_is_told_how_long_to_wait(page: Page, served: ServerProcess) -> None:
    made = httpx.post(
        f"{served.base_url}/admin/keys",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        json={"name": "slow", "rpm": 4},
    )
    assert made.status_code == 201
    _sign_in(page, served, key=made.json()["key"])
    _ready(page)
    page.select_option("#model", "echo")
    banner = page.locator("#banner")
    for attempt in range(4):
        _send(page, f"hello {attempt}")
        expect(page.locator("#send")).to_be_visible()
        if banner.is_visible():
            break
    expect(banner).to_contain_text("Rate limit reached")
    expect(banner).to_contain_text("try again in", ignore_case=True)
    # The refused message is not lost: it is back in the box, to send when the wait is over.
    expect(page.locator("#input")).to_have_value(f"hello {attempt}")
    expect(page.locator(".message.user .body", has_text=f"hello {attempt}")).to_have_count(0)


def test_markdown_is_rendered_and_markup_in_a_reply_stays_text(
    page: Page, served: ServerProcess
) -> None:
    _open(page, served, "echo")
    hostile = (
        "**bold** and `code` <script>window.pwned=1</script> "
        "<img src=x onerror=window.pwned=2> [link](javascript:window.pwned=3)"
    )
    _send(page, hostile)
    reply = page.locator(".message.assistant .body").last
    expect(page.locator(".message.assistant .stats").last).to_contain_text("out tokens")
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("code")).to_have_text("code")
    text = reply.inner_text()
    assert "<script>window.pwned=1</script>" in text  # shown as the text it is
    assert "<img src=x onerror=window.pwned=2>" in text
    assert reply.locator("script, img").count() == 0
    assert page.evaluate("window.pwned") is None
    href = reply.locator("a").get_attribute("href") if reply.locator("a").count() else None
    assert href is None or not href.startswith("javascript:")


def test_a_dropped_connection_is_said_plainly(
    page: Page, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("dropped")
    with ServerProcess(_env(tmp), tmp / "output.txt") as server:
        _sign_in(page, server)
        _ready(page)
        page.select_option("#model", "slow-echo")
        _send(page, " ".join(f"word{i}" for i in range(60)))
        expect(page.locator(".message.assistant .body").last).to_contain_text("word1")
        assert server.process is not None
        server.process.kill()  # the server dies mid-reply
        expect(page.locator("#banner")).to_contain_text("connection to the server was lost")
        expect(page.locator("#send")).to_be_visible()
