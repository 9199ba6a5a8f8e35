"""Fault injection and throttling for ``localoss``: latency, bandwidth caps, 503s, cut/short/corrupt bodies.

Also: first-byte stalls on a fraction of requests (a latency spike longer than a client's read timeout),
and "billion laughs" XML (entity expansion) in place of listings and error documents.

Everything is off by default. Decisions come from one ``random.Random(seed)``, drawn under a lock with a
fixed number of draws per request, so two servers started with the same ``--seed`` and fed the same
sequence of requests make the same decisions. A body with no fault and no throttle goes out in one
``sendfile`` from the object file; otherwise it goes out in slices.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "DEFAULT_SENDFILE_BLOCK",
    "BodyFault",
    "ConnectionAborted",
    "FaultConfig",
    "FaultInjector",
    "FaultPlan",
    "TokenBucket",
    "send_file_body",
    "xml_bomb",
]

log = logging.getLogger(__name__)

MIB = 1 << 20
DEFAULT_SENDFILE_BLOCK = 1 << 30
DEFAULT_MIN_SLICE = 16 << 10
DEFAULT_MAX_SLICE = 1 << 20
# Slices of ~1/50 s of traffic keep the achieved rate smooth without a syscall storm.
DEFAULT_SLICES_PER_S = 50
DEFAULT_CREDIT_S = 0.1


class BodyFault(Enum):
    """What goes wrong with an object body."""

    RESET = "reset"  # part of the body, then RST (SO_LINGER 0)
    SHORT = "short"  # part of the body, then FIN: fewer bytes than Content-Length
    CORRUPT = "corrupt"  # the whole body with one byte flipped


class ConnectionAborted(Exception):
    """Raised after a fault ended a body early on purpose; the caller closes the connection at once."""


@dataclass(frozen=True)
class FaultConfig:
    """Fault and throttle settings (all off by default).

    Attributes:
        seed: seed of the decision generator (None: from the OS, not reproducible).
        latency_ms: delay before the first byte of every response, in milliseconds.
        bandwidth_mibps: cap on all object bodies together, MiB/s (0: none).
        conn_bandwidth_mibps: cap per connection, MiB/s (0: none).
        fault_503: fraction of requests answered ``503 SlowDown``.
        fault_reset: fraction of object GET bodies cut mid-body by a connection reset.
        fault_short: fraction of object GET bodies ending early (then the connection is closed).
        fault_corrupt: fraction of object GET bodies with one byte flipped.
        fault_stall: fraction of responses held back ``stall_ms`` before their first byte (a spike).
        stall_ms: the length of such a stall, in milliseconds.
        xml_bomb: answer listings and error documents with a "billion laughs" XML document (nested
            entities that expand to gigabytes), which a safe parser must refuse.
        ignore_if_match: serve GETs whatever their ``If-Match`` says, as a proxy or an S3-compatible
            server that ignores the condition would: a client must then compare the ETag itself.
    """

    seed: int | None = None
    latency_ms: float = 0.0
    bandwidth_mibps: float = 0.0
    conn_bandwidth_mibps: float = 0.0
    fault_503: float = 0.0
    fault_reset: float = 0.0
    fault_short: float = 0.0
    fault_corrupt: float = 0.0
    fault_stall: float = 0.0
    stall_ms: float = 0.0
    xml_bomb: bool = False
    ignore_if_match: bool = False

    def __post_init__(self) -> None:
        for name in ("fault_503", "fault_reset", "fault_short", "fault_corrupt", "fault_stall"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} is {value}; give a fraction between 0 and 1")
        for name in ("latency_ms", "bandwidth_mibps", "conn_bandwidth_mibps", "stall_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} is negative; give 0 (off) or a positive number")


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The decisions for one request. ``position`` in [0, 1) places a cut or a flipped byte in the body."""

    slowdown: bool = False
    body_fault: BodyFault | None = None
    position: float = 0.0
    stall: bool = False


_NO_FAULT = FaultPlan()


class TokenBucket:
    """A rate limiter shared by the threads that call :meth:`take` (virtual-clock scheduling).

    Args:
        rate_bps: bytes per second.
        burst_bytes: how far ahead of the rate an idle bucket lets a sender go; at least
            :data:`DEFAULT_CREDIT_S` worth of bytes, so that sleeps that wake late (a loaded machine
            wakes them tens of milliseconds late) are made up for and the long-run rate holds.
    """

    def __init__(self, rate_bps: float, burst_bytes: int) -> None:
        self.rate_bps = rate_bps
        self._burst_s = max(burst_bytes / rate_bps, DEFAULT_CREDIT_S)
        self._next = time.monotonic() - self._burst_s  # when the bytes taken so far are "paid for"
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        """Block until ``nbytes`` may be sent."""
        with self._lock:
            now = time.monotonic()
            # Idle time (and a sleep that overshot) is credited up to one burst.
            self._next = max(self._next, now - self._burst_s) + nbytes / self.rate_bps
            wait = self._next - now
        if wait > 0:
            time.sleep(wait)


def _slice_bytes(rate_bps: float) -> int:
    return int(min(max(rate_bps / DEFAULT_SLICES_PER_S, DEFAULT_MIN_SLICE), DEFAULT_MAX_SLICE))


class FaultInjector:
    """Draws per-request decisions and owns the shared bandwidth bucket.

    Args:
        config: the fault settings.
    """

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._draws = any(
            (
                config.fault_503,
                config.fault_reset,
                config.fault_short,
                config.fault_corrupt,
                config.fault_stall,
            )
        )
        self.shared_bucket: TokenBucket | None = None
        if config.bandwidth_mibps:
            rate = config.bandwidth_mibps * MIB
            self.shared_bucket = TokenBucket(rate, _slice_bytes(rate))

    def plan(self) -> FaultPlan:
        """Decide the faults of the next request (the same six draws for every request)."""
        if not self._draws:
            return _NO_FAULT
        with self._lock:
            r503, rreset, rshort, rcorrupt, position, rstall = (self._rng.random() for _ in range(6))
        c = self.config
        fault = None
        if rreset < c.fault_reset:
            fault = BodyFault.RESET
        elif rshort < c.fault_short:
            fault = BodyFault.SHORT
        elif rcorrupt < c.fault_corrupt:
            fault = BodyFault.CORRUPT
        return FaultPlan(
            slowdown=r503 < c.fault_503, body_fault=fault, position=position, stall=rstall < c.fault_stall
        )

    def connection_bucket(self) -> TokenBucket | None:
        """A fresh per-connection bucket, or None without ``--conn-bandwidth-mibps``."""
        if not self.config.conn_bandwidth_mibps:
            return None
        rate = self.config.conn_bandwidth_mibps * MIB
        return TokenBucket(rate, _slice_bytes(rate))

    def delay(self, plan: FaultPlan = _NO_FAULT) -> None:
        """Sleep the configured latency, plus the stall if ``plan`` has one, before a first byte."""
        delay_ms = self.config.latency_ms + (self.config.stall_ms if plan.stall else 0.0)
        if delay_ms:
            if plan.stall:
                log.debug("fault: stalling %.0f ms before the first byte", delay_ms)
            time.sleep(delay_ms / 1000.0)


_LAUGH_LEVELS = 10
_LAUGHS_PER_LEVEL = 10


def xml_bomb(original: bytes) -> bytes:
    """A "billion laughs" document with the root element of ``original`` (``ListBucketResult``, ``Error``).

    Ten levels of ten references each: expanded, ``&lol9;`` is 10**9 copies of "lol" (3 GB).
    """
    start = original.find(b"<", original.find(b"?>") + 1 if original.startswith(b"<?xml") else 0)
    match = original[start + 1 :].split(b">", 1)[0].split()[0] if start >= 0 else b""
    root = match.decode("ascii", "replace") or "Error"
    refs = ['  <!ENTITY lol0 "lol">']
    for level in range(1, _LAUGH_LEVELS):
        refs.append(f'  <!ENTITY lol{level} "' + f"&lol{level - 1};" * _LAUGHS_PER_LEVEL + '">')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<!DOCTYPE {root} [\n" + "\n".join(refs) + "\n]>\n"
        f"<{root}><Code>&lol{_LAUGH_LEVELS - 1};</Code></{root}>\n"
    ).encode("ascii")


def _sendfile_all(sock: socket.socket, fd: int, offset: int, count: int) -> None:
    out = sock.fileno()
    while count > 0:
        sent = os.sendfile(out, fd, offset, min(count, DEFAULT_SENDFILE_BLOCK))
        if sent == 0:
            raise ConnectionResetError("the client stopped reading")
        offset += sent
        count -= sent


def _send_throttled(
    sock: socket.socket, fd: int, offset: int, count: int, buckets: list[TokenBucket]
) -> None:
    if not buckets:
        _sendfile_all(sock, fd, offset, count)
        return
    step = min(_slice_bytes(b.rate_bps) for b in buckets)
    end = offset + count
    while offset < end:
        n = min(step, end - offset)
        for bucket in buckets:
            bucket.take(n)
        _sendfile_all(sock, fd, offset, n)
        offset += n


def send_file_body(
    sock: socket.socket,
    fd: int,
    offset: int,
    length: int,
    *,
    plan: FaultPlan,
    buckets: list[TokenBucket],
) -> None:
    """Send ``length`` bytes of ``fd`` from ``offset``, applying the plan's body fault and the throttles.

    Raises:
        ConnectionAborted: a RESET or SHORT fault ended the body early; the caller must close the socket
            (and every file made from it) now, without writing anything more.
        OSError: the client went away.
    """
    fault = plan.body_fault if length > 0 else None
    if fault is None:
        _send_throttled(sock, fd, offset, length, buckets)
        return
    at = min(int(plan.position * length), length - 1)
    if fault is BodyFault.CORRUPT:
        _send_throttled(sock, fd, offset, at, buckets)
        flipped = bytes([os.pread(fd, 1, offset + at)[0] ^ 0xFF])
        sock.sendall(flipped)
        _send_throttled(sock, fd, offset + at + 1, length - at - 1, buckets)
        log.debug("fault: flipped byte %d of a %d-byte body", at, length)
        return
    _send_throttled(sock, fd, offset, at, buckets)
    if fault is BodyFault.RESET:
        # Linger 0: close() discards unsent data and sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        sock.shutdown(socket.SHUT_WR)
    log.debug("fault: %s after %d of %d body bytes", fault.value, at, length)
    raise ConnectionAborted(fault.value)
