"""What the reliability suite's cases share: the saved model, connectors with short budgets, tmpfs mounts,
a rotating STS provider, a thread whose file accesses are another user's.

Every case runs against ``localoss`` in a real subprocess with seeded faults. Budgets are small (1 MiB
chunks, short timeouts, millisecond backoff) so that a fault resolves in seconds; pytest-timeout only
guards against a hang, no test asserts a duration. The fixtures (``tiny_model``, ``crashable_localoss``)
are in ``reliability/conftest.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from localoss_harness import LocalOss

from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

T = TypeVar("T")
MIB = 1 << 20
FOREIGN_UID = 4242
"""An owner that is neither root nor ``nobody`` (no account needed): files of someone else's."""
MODEL_PREFIX = "models/tiny-qwen2/"
FAST_RETRIES: dict[str, Any] = {"retry_base_delay_s": 0.001, "retry_max_delay_s": 0.02}


@dataclass(frozen=True)
class SavedModel:
    """A tiny Qwen2 saved by ``save_pretrained`` in shards, and its state dict loaded locally."""

    source: Path
    files: dict[str, bytes]
    state: dict[str, torch.Tensor]


def upload_model(server: LocalOss, bucket: str, model: SavedModel) -> str:
    """Put the model's files under ``MODEL_PREFIX`` and return ``oss://bucket/prefix/``."""
    server.make_bucket(bucket)
    for name, data in model.files.items():
        server.put_file(bucket, MODEL_PREFIX + name, data)
    return f"oss://{bucket}/{MODEL_PREFIX}"


def make_connector(server: LocalOss, **overrides: Any) -> OssModelConnector:
    """A connector with 1 MiB chunks, 4 connections, fast retries; ``overrides`` win."""
    settings: dict[str, Any] = {
        "chunk_size_mb": 1,
        "small_file_mb": 1,
        "prefetch_vcpus": 2,
        "prefetch_workers": 2,
        "max_attempts": 30,
        "read_timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        "wait_timeout_s": 60.0,
        **FAST_RETRIES,
        **overrides,
    }
    cred = settings.pop("cred_provider", None)
    cred_path = settings.pop("cred_path", "")
    if cred is None and not cred_path:
        cred = Credentials(server.access_key_id, server.access_key_secret)
    return OssModelConnector(server.endpoint, cred_provider=cred, cred_path=cred_path, **settings)


def load_model(model_dir: Path) -> dict[str, torch.Tensor]:
    """``from_pretrained`` the directory and return a copy of its state dict."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name


class RotatingProvider:
    """An STS-like provider: the old token until the server refuses it, then a fresh one."""

    def __init__(self, key_id: str, secret: str, tokens: list[str]) -> None:
        self._key_id, self._secret = key_id, secret
        self._tokens = tokens
        self.refreshes = 0
        self._lock = threading.Lock()

    def get(self) -> Credentials:
        with self._lock:
            token = self._tokens[min(self.refreshes, len(self._tokens) - 1)]
        return Credentials(self._key_id, self._secret, token)

    def invalidate(self) -> None:
        with self._lock:
            self.refreshes += 1


def replace_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as JSON beside ``path`` and rename it over ``path``: readers (``localoss``'s
    ``--sts-token-file``, a credentials file) never see a half-written file."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(document))
    os.replace(scratch, path)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (root only; the caller skips otherwise) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN): tried once on a scratch dir."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", scratch], capture_output=True, check=False
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", scratch], check=False)
    return True


def as_other_user_command(command: list[str]) -> list[str]:
    """``command`` run as ``nobody`` (root only). It keeps CAP_DAC_READ_SEARCH, and only it, so that it
    can reach this interpreter and the worktree under 0700 folders; the files it creates are nobody's."""
    return [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        *command,
    ]


def as_other_user(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as ``nobody`` (see :func:`as_other_user_command`) and check that it succeeded."""
    return subprocess.run(as_other_user_command(command), check=True, text=True, **kwargs)


def as_other_file_user(function: Callable[[], T]) -> T:
    """Run ``function`` in a thread whose file-system user and group are ``nobody``'s (root only).

    Linux keeps the file-system ids per thread, and threads started from that one inherit them, so the
    rest of the process stays root. Changing the file-system uid from 0 drops CAP_FOWNER and
    CAP_DAC_OVERRIDE from the thread: a world-writable file of :data:`FOREIGN_UID`'s can then be opened
    and written, but ``futimens`` with a time is refused (``EPERM``: owner or CAP_FOWNER only), which is
    what a file system that keeps its own times answers.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    nobody = pwd.getpwnam("nobody")
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        libc.setfsgid(nobody.pw_gid)
        libc.setfsuid(nobody.pw_uid)
        try:
            results.append(function())
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name="as-other-file-user")
    thread.start()
    thread.join(60.0)
    assert not thread.is_alive(), "the function run as another file user did not return"
    if errors:
        raise errors[0]
    return results[0]


def give_away(path: str | Path) -> None:
    """Make ``path`` a world-writable file of :data:`FOREIGN_UID`'s (see :func:`as_other_file_user`)."""
    os.chown(path, FOREIGN_UID, FOREIGN_UID)
    os.chmod(path, 0o666)
