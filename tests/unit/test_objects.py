"""``objects``: an object version's modification time as the nanoseconds every local copy shows."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmodelconnector.objects import ObjectInfo, mtime_ns


@pytest.mark.parametrize(
    ("last_modified", "expected"),
    [
        (1_620_284_889.0, 1_620_284_889_000_000_000),  # an HTTP date: whole seconds
        (1_620_284_889.123, 1_620_284_889_123_000_000),  # a listing's milliseconds
        (0.0, None),  # the server sent no time
    ],
)
def test_last_modified_becomes_whole_nanoseconds(last_modified: float, expected: int | None) -> None:
    assert mtime_ns(last_modified) == expected
    info = ObjectInfo("b", "k", 1, '"e"', last_modified)
    assert info.mtime_ns == expected


@given(seconds=st.integers(min_value=1, max_value=2**33), millis=st.integers(min_value=0, max_value=999))
def test_the_time_is_the_same_however_the_float_was_made(seconds: int, millis: int) -> None:
    # A listing's "...T12:00:00.123Z" and a HEAD's date parse into floats by different routes.
    as_sum = seconds + millis / 1000
    as_text = float(f"{seconds}.{millis:03d}")
    assert mtime_ns(as_sum) == mtime_ns(as_text) == seconds * 10**9 + millis * 10**6
