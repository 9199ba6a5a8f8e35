"""This process's identity (pid and start time), as owner records and state tables store it."""

from __future__ import annotations

import os

from ossmodelconnector.cache.segments import ProcessIdentity, own_start_time, process_start_time


def test_own_start_time_is_the_one_proc_reports_and_is_kept() -> None:
    assert own_start_time() == process_start_time(os.getpid())
    assert own_start_time() == own_start_time()
    me = ProcessIdentity.current()
    assert (me.pid, me.start_time) == (os.getpid(), process_start_time(os.getpid()))
    assert me.alive()


def test_a_forked_child_reports_its_own_start_time_not_its_parents() -> None:
    parent = own_start_time()  # kept in this process before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without running the parent's cleanup
        try:
            child = ProcessIdentity.current()
            fresh = process_start_time(os.getpid())
            os.write(write, f"{child.pid} {child.start_time} {fresh}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_pid, kept, fresh = (int(field) for field in pipe.read().split())
    os.waitpid(pid, 0)
    assert child_pid == pid
    assert kept == fresh  # read in the child, not inherited from the parent
    assert own_start_time() == parent
