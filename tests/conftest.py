"""Fixtures shared by every layer: a real ``localoss`` subprocess, a fresh bucket per test, a clean env."""

from __future__ import annotations

import gc
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

from localoss_harness import LocalOss, start_localoss

from ossmodelconnector.cache.segments import ours_in_dev_shm

_bucket_numbers = itertools.count()

# No test asserts a duration, hypothesis' per-example deadline included: on a shared 2-core machine an
# example that takes 200 ms instead of 20 says nothing about the code. Tests may still set their own.
settings.register_profile("ossmodelconnector", deadline=None)
settings.load_profile("ossmodelconnector")


def _shm_names_held_elsewhere() -> set[str]:
    """``/dev/shm`` names another live process maps or has open: segments of a concurrent run, not ours."""
    held: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                held.update(line.rsplit("/dev/shm/", 1)[1].split()[0] for line in maps if "/dev/shm/" in line)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/dev/shm/"):
                    held.add(target[len("/dev/shm/") :].split()[0])
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
    return held


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_segments() -> Iterator[None]:
    """At session end, no ``ossmc-*`` name is left in ``/dev/shm`` that this session created.

    Other pytest runs on the machine may own segments: names present at the start are ignored, and so
    are new names another live process still maps or holds open (a concurrent run in progress).
    """
    before = set(ours_in_dev_shm())
    yield
    gc.collect()  # a connector dropped without close() frees its segments in __del__
    new = set(ours_in_dev_shm()) - before
    leaked = sorted(new - _shm_names_held_elsewhere()) if new else []
    assert not leaked, f"shared-memory segments left in /dev/shm by this test session: {leaked}"


@pytest.fixture(autouse=True)
def _restore_environ() -> Iterator[None]:
    """Every test gets back the environment it started with."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def localoss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOss]:
    """One default ``localoss`` for the session (no faults, default credentials)."""
    server = start_localoss(tmp_path_factory.mktemp("localoss-root"))
    yield server
    assert server.stop() == 0, "localoss did not exit cleanly on SIGTERM"


@pytest.fixture
def localoss_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalOss]]:
    """Start extra servers with their own flags (faults, credentials); all are stopped after the test."""
    servers: list[LocalOss] = []

    def start(*args: str) -> LocalOss:
        server = start_localoss(tmp_path_factory.mktemp("localoss-root"), *args)
        servers.append(server)
        return server

    yield start
    codes = [server.stop() for server in servers]
    assert all(code == 0 for code in codes), f"localoss exit codes {codes}"


@pytest.fixture
def bucket(localoss: LocalOss) -> str:
    """A fresh, empty bucket on the session server for this test."""
    name = f"test-bucket-{os.getpid()}-{next(_bucket_numbers)}"
    localoss.make_bucket(name)
    return name
