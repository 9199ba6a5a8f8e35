"""The retry policy: how many attempts, and how long to sleep before each retry.

A frozen value object in the manner of urllib3's ``Retry``: exponential backoff with *full jitter*
(AWS architecture blog, "Exponential Backoff And Jitter"): before retry ``n`` (``n >= 1``) sleep a
uniform random time in ``[0, min(max_delay_s, base_delay_s * 2 ** (n - 1))]``. Full jitter spreads the
retries of many workers that failed together (a 503 SlowDown burst) instead of synchronising them.

:class:`Attempts` applies a policy to one logical request: which failures are transient
(:func:`is_retryable`: 5xx, 429, SlowDown, resets, timeouts, short bodies), the one credential refresh
when the server refuses the credentials, and the error raised when the budget runs out.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ossmodelconnector.config import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_BASE_DELAY_S,
    DEFAULT_RETRY_MAX_DELAY_S,
)
from ossmodelconnector.errors import (
    AccessDeniedError,
    ConfigError,
    ConnectorError,
    CredentialsError,
    ObjectChangedError,
    ObjectNotFoundError,
    RequestError,
    RequestTimeoutError,
    RetriesExhaustedError,
)
from ossmodelconnector.oss.responses import REFRESH_CODES, RETRYABLE_CODES

if TYPE_CHECKING:
    from ossmodelconnector.config import Config

__all__ = [
    "Attempts",
    "RetryPolicy",
    "is_retryable",
]

log = logging.getLogger(__name__)


# 2.0 ** 1024 raises OverflowError; past 2 ** 1000 any positive base has long reached the max delay.
_MAX_EXPONENT = 1000


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    Args:
        max_attempts: total attempts per request, the first one included (``1`` = never retry).
        base_delay_s: the backoff cap before the first retry, in seconds.
        max_delay_s: the largest backoff cap, in seconds.

    Raises:
        ConfigError: a non-positive attempt count, a negative delay, or ``base_delay_s > max_delay_s``.

    Example:
        >>> policy = RetryPolicy(max_attempts=4, base_delay_s=0.1, max_delay_s=1.0)
        >>> policy.cap_s(1), policy.cap_s(3), policy.cap_s(10)
        (0.1, 0.4, 1.0)
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay_s: float = DEFAULT_RETRY_BASE_DELAY_S
    max_delay_s: float = DEFAULT_RETRY_MAX_DELAY_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(
                f"max_attempts={self.max_attempts} must be at least 1 (1 means: never retry); "
                "set maxAttempts to a positive integer"
            )
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ConfigError(
                f"retry delays must not be negative (base {self.base_delay_s}s, max {self.max_delay_s}s): "
                "set retryBaseDelay/retryMaxDelay to values >= 0"
            )
        if self.base_delay_s > self.max_delay_s:
            raise ConfigError(
                f"retry base delay {self.base_delay_s}s exceeds the max delay {self.max_delay_s}s: "
                "raise the max or lower the base"
            )

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        """The policy of ``config.max_attempts``, ``retry_base_delay_s`` and ``retry_max_delay_s``."""
        return cls(
            max_attempts=config.max_attempts,
            base_delay_s=config.retry_base_delay_s,
            max_delay_s=config.retry_max_delay_s,
        )

    def can_retry(self, attempt: int) -> bool:
        """Whether another attempt may follow attempt number ``attempt`` (counted from 1)."""
        return attempt < self.max_attempts

    def cap_s(self, retry: int) -> float:
        """The upper bound of the sleep before retry number ``retry`` (counted from 1), in seconds."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        exponent = min(retry - 1, _MAX_EXPONENT)
        return min(self.max_delay_s, self.base_delay_s * (2.0**exponent))

    def backoff_s(self, retry: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """The sleep before retry number ``retry``: uniform in ``[0, cap_s(retry)]`` (full jitter).

        Args:
            retry: 1 for the first retry, 2 for the second...
            uniform: the random source, ``random.uniform`` by default (injectable for tests).

        Returns:
            Seconds to sleep, within ``[0, cap_s(retry)]``.
        """
        cap = self.cap_s(retry)
        return min(cap, max(0.0, uniform(0.0, cap)))


def is_retryable(err: ConnectorError) -> bool:
    """Whether another attempt may succeed: 5xx, 429, SlowDown, resets, timeouts and short bodies.

    Missing objects, refused access or credentials and a changed ETag are final.
    """
    if isinstance(err, (ObjectChangedError, ObjectNotFoundError, AccessDeniedError, CredentialsError)):
        return False
    if isinstance(err, RequestTimeoutError) or err.code in RETRYABLE_CODES:
        return True
    return err.status is not None and (err.status >= 500 or err.status == 429)


class Attempts:
    """The attempts of one logical request: retry with backoff, refresh credentials once, or give up.

    Usage: ``begin()`` before each attempt; ``failed(err)`` after a failed one either returns (after the
    backoff sleep: try again) or raises what the caller gets.

    Args:
        policy: the retry policy.
        method: the HTTP method, for log lines.
        place: the object (and range) as messages name it.
        context: ``bucket``, ``key`` and ``range`` for the final error.
        check_open: raises :class:`~ossmodelconnector.errors.ClosedError` once the client is closed.
        refresh: drops cached credentials (``CredentialProvider.invalidate``).
        on_event: told ``"retries"`` or ``"credential_refreshes"`` (the client's counters).
        sleep: the backoff sleep, ``time.sleep`` by default.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        method: str,
        place: str,
        context: dict[str, Any],
        *,
        check_open: Callable[[], None],
        refresh: Callable[[], None],
        on_event: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._policy = policy
        self._method = method
        self._place = place
        self._context = context
        self._check_open = check_open
        self._refresh = refresh
        self._on_event = on_event
        self._sleep = sleep
        self.attempt = 0
        self._refreshed = False

    def begin(self) -> None:
        """Count the attempt about to start.

        Raises:
            ClosedError: the client was closed meanwhile.
        """
        self._check_open()
        self.attempt += 1

    def failed(self, err: ConnectorError) -> None:
        """Return to try again (after the backoff sleep), or raise the error the caller gets.

        Raises:
            ConnectorError: ``err`` itself when it is final, :class:`RetriesExhaustedError` (or
                :class:`RequestTimeoutError` when the last attempt timed out) when the budget is spent,
                chained to ``err``.
        """
        if not isinstance(err, (RequestError, CredentialsError)):
            raise err
        if err.code in REFRESH_CODES and not self._refreshed:
            self._refreshed = True
            self.attempt -= 1  # the retry with fresh credentials is not a transient-failure retry
            self._on_event("credential_refreshes")
            log.debug(
                "%s %s: %s; re-reading credentials and retrying once", self._method, self._place, err.code
            )
            self._refresh()
            return
        if not is_retryable(err):
            raise err
        if not self._policy.can_retry(self.attempt):
            raise self._exhausted(err) from err
        delay = self._policy.backoff_s(self.attempt)
        self._on_event("retries")
        log.debug(
            "%s %s: attempt %d/%d failed (%s, status %s); retrying in %.3fs",
            self._method,
            self._place,
            self.attempt,
            self._policy.max_attempts,
            err.code,
            err.status,
            delay,
        )
        self._sleep(delay)

    def _exhausted(self, last: RequestError | CredentialsError) -> RequestError:
        context = {**self._context, "status": last.status, "code": last.code, "request_id": last.request_id}
        if isinstance(last, RequestTimeoutError):
            return RequestTimeoutError(
                f"{self._place}: no answer within the read timeout in {self.attempt} attempts; the server or "
                "network is too slow or stalled: check them, or raise timeouts.readSeconds and "
                "retry.maxAttempts",
                **context,
            )
        return RetriesExhaustedError(
            f"{self._place}: gave up after {self.attempt} attempts, the last failed with: {last.message}. "
            "Transient failures (5xx, SlowDown, connection resets, short bodies) outlasted the retry "
            "budget: check the server and network, or raise retry.maxAttempts / retry.maxDelaySeconds",
            **context,
        )
