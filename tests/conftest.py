"""Fixtures shared by every layer: a real ``localoss`` subprocess, a fresh bucket per test, a clean env."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from localoss_harness import LocalOss, start_localoss

_bucket_numbers = itertools.count()


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
