"""``SegmentHold``: the last process that holds a data segment removes it; a dead holder counts for nothing.

Each holder is a real process (or a second open file description in this one, which ``flock`` treats the
same way); the file is a real file in a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ossmodelconnector.cache.segment_hold import SegmentHold

HOLDER = textwrap.dedent(
    """
    import sys
    from ossmodelconnector.cache.segment_hold import SegmentHold
    hold = SegmentHold.take(sys.argv[1])
    print("held", flush=True)
    if sys.stdin.readline().strip() == "release":
        print(hold.release(unlink_if_last=True), flush=True)
    """
)


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    path = tmp_path / "ossmc-d-test"
    path.write_bytes(b"x" * 4096)
    return path


def _holder(path: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_the_last_of_two_holders_unlinks(segment: Path) -> None:
    first, second = SegmentHold.take(str(segment)), SegmentHold.take(str(segment))
    assert first.release(unlink_if_last=True) is False and segment.exists()
    assert first.release(unlink_if_last=True) is False  # idempotent
    assert second.release(unlink_if_last=True) is True and not segment.exists()


def test_a_release_without_unlink_leaves_the_file(segment: Path) -> None:
    hold = SegmentHold.take(str(segment))
    assert hold.release(unlink_if_last=False) is False and not hold.held
    assert segment.exists()


def test_a_hold_in_another_process_keeps_the_file_until_it_releases(segment: Path) -> None:
    other = _holder(segment)
    try:
        assert SegmentHold.take(str(segment)).release(unlink_if_last=True) is False
        assert segment.exists()
        out, _ = other.communicate("release\n", timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert out.strip() == "True" and not segment.exists()


def test_a_holder_killed_with_sigkill_holds_nothing(segment: Path) -> None:
    other = _holder(segment)
    other.kill()
    other.communicate(timeout=60)
    assert SegmentHold.take(str(segment)).release(unlink_if_last=True) is True
    assert not segment.exists()


def test_a_forked_child_does_not_hold_its_parents_segment(segment: Path) -> None:
    hold = SegmentHold.take(str(segment))
    read, write = os.pipe()
    started_read, started_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (its fork handlers ran): stays alive until the parent has released
        os.close(write)
        os.write(started_write, b"s")
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    os.close(started_write)
    try:
        assert os.read(started_read, 1) == b"s"
        os.close(started_read)
        assert hold.release(unlink_if_last=True) is True  # the child's inherited descriptor was closed
        assert not segment.exists()
    finally:
        os.close(write)
        os.waitpid(pid, 0)


def test_a_forked_child_releasing_its_copy_unlinks_nothing(segment: Path) -> None:
    hold = SegmentHold.take(str(segment))
    pid = os.fork()
    if pid == 0:
        os._exit(0 if hold.release(unlink_if_last=True) is False else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert segment.exists() and hold.held
    assert hold.release(unlink_if_last=True) is True


def test_a_file_removed_or_replaced_is_not_held(segment: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SegmentHold.take(str(segment.with_name("missing")))
    hold = SegmentHold.take(str(segment))
    segment.unlink()
    segment.write_bytes(b"new")  # another file under the same name: not the one we held
    assert hold.release(unlink_if_last=True) is False
    assert segment.read_bytes() == b"new"
