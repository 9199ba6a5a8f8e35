"""The retry policy's arithmetic, which failures are retried, and the attempt bookkeeping."""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmodelconnector.config import load_config
from ossmodelconnector.errors import (
    AccessDeniedError,
    ClosedError,
    ConfigError,
    ConnectorError,
    CredentialsError,
    ObjectChangedError,
    ObjectNotFoundError,
    RequestError,
    RequestTimeoutError,
    RetriesExhaustedError,
)
from ossmodelconnector.oss.responses import ErrorDetails, error_for_status
from ossmodelconnector.oss.retry import Attempts, RetryPolicy, is_retryable

policies = st.builds(
    lambda attempts, base, extra: RetryPolicy(attempts, base, base + extra),
    st.integers(1, 100),
    st.floats(0, 10, allow_nan=False),
    st.floats(0, 100, allow_nan=False),
)


@given(policy=policies, retry=st.integers(1, 10_000), fraction=st.floats(0, 1))
def test_backoff_is_bounded(policy: RetryPolicy, retry: int, fraction: float) -> None:
    cap = policy.cap_s(retry)
    assert 0 <= cap <= policy.max_delay_s
    delay = policy.backoff_s(retry, lambda lo, hi: lo + (hi - lo) * fraction)
    assert 0 <= delay <= cap


@given(policy=policies, retry=st.integers(1, 200))
def test_cap_grows_exponentially_until_the_max(policy: RetryPolicy, retry: int) -> None:
    assert policy.cap_s(1) == policy.base_delay_s
    assert policy.cap_s(retry) <= policy.cap_s(retry + 1)
    expected = min(policy.max_delay_s, policy.base_delay_s * 2.0 ** (retry - 1))
    assert policy.cap_s(retry) == pytest.approx(expected)


def test_full_jitter_spans_zero_to_cap() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=8.0)
    rng = random.Random(42)
    delays = [policy.backoff_s(3, rng.uniform) for _ in range(2000)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert min(delays) < 0.2 and max(delays) > 3.8  # the whole interval is used, not just the cap
    assert policy.backoff_s(3, lambda lo, hi: hi + 1) == 4.0  # a misbehaving source is clamped
    assert policy.backoff_s(3, lambda lo, hi: lo - 1) == 0.0


def test_can_retry_counts_attempts_including_the_first() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.can_retry(n) for n in (1, 2, 3)] == [True, True, False]
    assert not RetryPolicy(max_attempts=1).can_retry(1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, "at least 1"),
        ({"base_delay_s": -1}, "negative"),
        ({"base_delay_s": 9, "max_delay_s": 1}, "exceeds"),
    ],
)
def test_invalid_policies(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RetryPolicy(**kwargs)
    with pytest.raises(ValueError):
        RetryPolicy().cap_s(0)


def test_from_config() -> None:
    config = load_config(None, max_attempts=4, retry_base_delay_s=0.5, retry_max_delay_s=2)
    assert RetryPolicy.from_config(config) == RetryPolicy(4, 0.5, 2.0)


def _error(status: int, code: str = "", request_id: str = "REQ-1") -> ConnectorError:
    return error_for_status(
        status, ErrorDetails(code=code, message="m", request_id=request_id), "GET", "bkt", "k", (0, 9)
    )


@pytest.mark.parametrize(
    ("status", "code", "cls", "retryable"),
    [
        (404, "NoSuchKey", ObjectNotFoundError, False),
        (404, "NoSuchBucket", ObjectNotFoundError, False),
        (404, "", ObjectNotFoundError, False),
        (403, "AccessDenied", AccessDeniedError, False),
        (403, "SignatureDoesNotMatch", AccessDeniedError, False),
        (403, "RequestTimeTooSkewed", AccessDeniedError, False),
        (403, "InvalidAccessKeyId", CredentialsError, False),
        (403, "SecurityTokenExpired", CredentialsError, False),
        (403, "InvalidSecurityToken", CredentialsError, False),
        (412, "PreconditionFailed", ObjectChangedError, False),
        (416, "InvalidRange", RequestError, False),
        (400, "InvalidArgument", RequestError, False),
        (500, "InternalError", RequestError, True),
        (503, "SlowDown", RequestError, True),
        (503, "", RequestError, True),
        (429, "", RequestError, True),
    ],
)
def test_status_mapping(status: int, code: str, cls: type[ConnectorError], retryable: bool) -> None:
    err = _error(status, code)
    assert type(err) is cls
    assert is_retryable(err) is retryable
    assert (err.bucket, err.key, err.range, err.status, err.request_id) == (
        "bkt",
        "k",
        (0, 9),
        status,
        "REQ-1",
    )
    assert err.code == (code or {404: "NoSuchKey", 503: "ServiceUnavailable", 429: "HTTP429"}[status])
    assert "oss://bkt/k bytes [0, 9)" in str(err) and "REQ-1" in str(err)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls and copy.code == err.code and copy.range == err.range


def test_transport_codes_are_retryable() -> None:
    for code in ("ConnectionError", "IncompleteBody", "SlowDown"):
        assert is_retryable(RequestError("x", code=code))
    assert is_retryable(RequestTimeoutError("x", code="RequestTimeout"))
    assert not is_retryable(RequestError("x", code="InvalidResponse"))
    assert not is_retryable(RequestError("x", code="TLSError"))


class _Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.events: list[str] = []
        self.refreshes = 0
        self.closed = False

    def attempts(self, max_attempts: int) -> Attempts:
        def check_open() -> None:
            if self.closed:
                raise ClosedError("closed")

        def refresh() -> None:
            self.refreshes += 1

        return Attempts(
            RetryPolicy(max_attempts, 0.5, 4.0),
            "GET",
            "oss://bkt/k",
            {"bucket": "bkt", "key": "k", "range": (0, 9)},
            check_open=check_open,
            refresh=refresh,
            on_event=self.events.append,
            sleep=self.sleeps.append,
        )


def _run(attempts: Attempts, failures: list[ConnectorError]) -> int:
    """Fail with ``failures`` in turn, then succeed; return the number of attempts made."""
    made = 0
    while True:
        attempts.begin()
        made += 1
        try:
            if failures:
                raise failures.pop(0)
            return made
        except ConnectorError as err:
            attempts.failed(err)


def test_attempts_retry_then_succeed() -> None:
    rec = _Recorder()
    assert (
        _run(rec.attempts(4), [_error(503, "SlowDown"), RequestError("reset", code="ConnectionError")]) == 3
    )
    assert len(rec.sleeps) == 2 and rec.sleeps[0] <= 0.5 and rec.sleeps[1] <= 1.0
    assert rec.events == ["retries", "retries"]


def test_attempts_exhausted_chains_the_last_cause() -> None:
    rec = _Recorder()
    last = _error(503, "SlowDown", request_id="LAST")
    with pytest.raises(RetriesExhaustedError) as caught:
        _run(rec.attempts(3), [_error(500, "InternalError"), _error(503), last, _error(503)])
    err = caught.value
    assert err.__cause__ is last
    assert (err.status, err.code, err.request_id, err.range) == (503, "SlowDown", "LAST", (0, 9))
    assert "3 attempts" in str(err)
    assert len(rec.sleeps) == 2


def test_attempts_exhausted_by_timeouts_is_a_timeout() -> None:
    rec = _Recorder()
    with pytest.raises(RequestTimeoutError) as caught:
        _run(rec.attempts(2), [RequestTimeoutError("slow", code="RequestTimeout")] * 2)
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value.__cause__, RequestTimeoutError)


def test_final_errors_are_not_retried() -> None:
    for err in (_error(404), _error(412), _error(416), _error(403, "AccessDenied")):
        rec = _Recorder()
        with pytest.raises(type(err)) as caught:
            _run(rec.attempts(5), [err])
        assert caught.value is err
        assert rec.sleeps == [] and rec.refreshes == 0


def test_refused_credentials_are_refreshed_once_without_using_the_budget() -> None:
    rec = _Recorder()
    assert _run(rec.attempts(1), [_error(403, "SecurityTokenExpired")]) == 2
    assert rec.refreshes == 1 and rec.sleeps == [] and rec.events == ["credential_refreshes"]
    rec = _Recorder()
    with pytest.raises(CredentialsError) as caught:
        _run(rec.attempts(5), [_error(403, "InvalidAccessKeyId"), _error(403, "InvalidAccessKeyId")])
    assert caught.value.code == "InvalidAccessKeyId"
    assert rec.refreshes == 1


def test_closed_client_stops_the_attempts() -> None:
    rec = _Recorder()
    attempts = rec.attempts(5)
    attempts.begin()
    attempts.failed(_error(503))
    rec.closed = True
    with pytest.raises(ClosedError):
        attempts.begin()
