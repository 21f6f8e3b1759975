"""The schemas the tests validate against are the official spec's, not a stale copy."""

from __future__ import annotations

import json

import pytest

from tests.spec import SHARED_SPEC, VENDORED, extract, load_spec


@pytest.mark.skipif(not SHARED_SPEC.exists(), reason="no shared/ beside this clone")
def test_vendored_schemas_match_the_shared_spec() -> None:
    current = json.loads(json.dumps(extract(load_spec(SHARED_SPEC)), default=str))

    assert json.loads(VENDORED.read_text()) == current, "run: python -m tests.spec"
