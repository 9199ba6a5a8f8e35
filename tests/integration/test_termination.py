"""SIGTERM (``docker stop``, ``kill``) ends a process that prepared a directory without leaving its
segments in ``/dev/shm``; a SIGTERM handler the program set itself is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from localoss_harness import LocalOss

from ossmodelconnector.cache.segments import ours_in_dev_shm, state_table_name

LIVENESS_S = 60.0

CHILD = r"""
import signal, sys, time
from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

endpoint, key_id, secret, uri, model_dir, mode = sys.argv[1:]
if mode == "own-handler":
    signal.signal(signal.SIGTERM, lambda *_: (print("own handler", flush=True), sys.exit(7)))
connector = OssModelConnector(endpoint, cred_provider=Credentials(key_id, secret), small_file_mb=1)
directory = connector.prepare_directory(uri, model_dir, wait=True)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def run_until_ready(localoss: LocalOss, bucket: str, model_dir: Path, mode: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            localoss.endpoint,
            localoss.access_key_id,
            localoss.access_key_secret,
            f"oss://{bucket}/term/",
            str(model_dir),
            mode,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line == "ready", child.stderr.read() if child.stderr else line
    return child


def test_sigterm_releases_the_shared_memory(localoss: LocalOss, bucket: str, tmp_path: Path) -> None:
    localoss.put_file(bucket, "term/model.safetensors", os.urandom(3 << 20))
    localoss.put_file(bucket, "term/config.json", b"{}")
    model_dir = tmp_path / "model"
    child = run_until_ready(localoss, bucket, model_dir, "default")
    table = state_table_name(model_dir)
    assert table in ours_in_dev_shm()
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=LIVENESS_S)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert table not in ours_in_dev_shm()
    assert not (model_dir / "model.safetensors").is_symlink()  # the entry went with its segment
    assert (model_dir / "config.json").read_bytes() == b"{}"  # small files stay on disk


def test_a_programs_own_sigterm_handler_is_kept(localoss: LocalOss, bucket: str, tmp_path: Path) -> None:
    localoss.put_file(bucket, "term/model.safetensors", os.urandom(3 << 20))
    model_dir = tmp_path / "model"
    child = run_until_ready(localoss, bucket, model_dir, "own-handler")
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=LIVENESS_S)
    assert child.returncode == 7 and "own handler" in out, err
    assert state_table_name(model_dir) not in ours_in_dev_shm()  # sys.exit ran atexit: closed
