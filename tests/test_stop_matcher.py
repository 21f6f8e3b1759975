"""Stop sequences found across piece boundaries, never emitted."""

from __future__ import annotations

import pytest

from chatbot_api.providers.stop import StopMatcher


def _run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ((), ["a", "b"], ("ab", False)),
        (("END",), ["hello E", "N", "D tail"], ("hello ", True)),
        (("END",), ["hello E", "N", "o"], ("hello ENo", False)),
        (("END",), ["hello EN"], ("hello EN", False)),
        (("xy", "b"), ["aab", "xy"], ("aa", True)),
        (("abc", "bcd"), ["xab", "cd"], ("x", True)),
        (("\n\n",), ["line\n", "\nnext"], ("line", True)),
    ],
)
def test_stops(stops: tuple[str, ...], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert _run(stops, pieces) == expected


def test_held_text_is_released_as_soon_as_it_cannot_match() -> None:
    matcher = StopMatcher(("STOP",))

    assert matcher.feed("ST") == ("", False)
    assert matcher.feed("ART") == ("START", False)
