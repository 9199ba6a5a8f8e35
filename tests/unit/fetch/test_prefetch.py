"""The prefetch scheduler: order, demand boosts, budget, errors, integrity, lifecycle, delivered reads.

No sockets: ``MemoryObject.fetch_into`` (``fetch_harness``) serves an in-memory ``bytes`` and can fail,
block or lie about the CRC on chosen calls. Tests assert bytes, call orders and states, never durations.
The chunk buffer on its own is in ``test_chunk_buffer.py``.
"""

from __future__ import annotations

import gc
import os
import random
import threading
from collections.abc import Callable, Iterator

import pytest
from fetch_harness import LIVENESS_LIMIT_S, Gate, Hook, MemoryObject, eventually, payload

from ossmodelconnector._fast import crc64
from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.errors import (
    ClosedError,
    ConnectorError,
    IntegrityError,
    RequestTimeoutError,
    RetriesExhaustedError,
)
from ossmodelconnector.fetch.prefetch import ObjectHandle, PrefetchScheduler
from ossmodelconnector.objects import ObjectInfo

THREAD_PREFIX = "ossmodelconnector-prefetch"


def read_all(handle: ObjectHandle, timeout_s: float = LIVENESS_LIMIT_S) -> bytes:
    return handle.read_bytes(0, handle.size, timeout_s)


@pytest.fixture
def schedulers() -> Iterator[Callable[..., PrefetchScheduler]]:
    made: list[PrefetchScheduler] = []

    def make(connections: int = 2, budget_bytes: int | None = None) -> PrefetchScheduler:
        scheduler = PrefetchScheduler(connections, budget_bytes)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


# --- order ------------------------------------------------------------------------------------------


def test_read_ahead_follows_registration_order_then_file_order(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    gate = Gate(lambda number, *_: number == 0)
    first = MemoryObject(payload(40), key="a", hook=gate)
    second = MemoryObject(payload(30, 1), key="b")
    scheduler = schedulers(connections=1)
    handle_a = scheduler.register(first.info, first.fetch_into, chunk_size=10)
    handle_b = scheduler.register(second.info, second.fetch_into, chunk_size=10)
    gate.wait_entered()
    gate.opened.set()
    assert read_all(handle_b) == second.data and read_all(handle_a) == first.data
    assert first.calls == [(0, 10), (10, 20), (20, 30), (30, 40)]
    assert second.calls == [(0, 10), (10, 20), (20, 30)]


def test_cancelling_a_private_objects_queue_also_cancels_its_read_ahead_still_deferred() -> None:
    # A lazy file peeked at registers, cancels its queue and fetches only what is read: the read-ahead
    # that a private object gets after read_ahead_delay_s must not come back behind the cancel.
    peeked = MemoryObject(payload(100), key="peeked")
    later = MemoryObject(payload(30, 1), key="later")
    with PrefetchScheduler(connections=1, read_ahead_delay_s=0.05) as scheduler:
        with scheduler.lock:
            handle = scheduler.register(peeked.info, peeked.fetch_into, chunk_size=10)
            scheduler.cancel_queued(handle)
        assert handle.read_bytes(75, 78, LIVENESS_LIMIT_S) == peeked.data[75:78]
        # Registered after it, so due after it: once its read-ahead has run, the peeked one's was due too.
        scheduler.register(later.info, later.fetch_into, chunk_size=10)
        eventually(lambda: len(later.calls) == 3)
        assert peeked.calls == [(70, 80)]


def test_demand_moves_a_far_chunk_to_the_front(schedulers: Callable[..., PrefetchScheduler]) -> None:
    gate = Gate(lambda number, *_: number == 0)
    obj = MemoryObject(payload(100), hook=gate)
    scheduler = schedulers(connections=1)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    gate.wait_entered()  # the one worker is busy with chunk 0; chunks 1..9 are queued behind it
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(handle.read_bytes(75, 78, LIVENESS_LIMIT_S)))
    reader.start()
    eventually(lambda: scheduler._queued.get((handle.id, 7), (9,))[0] == 0)  # demanded, not yet fetched
    gate.opened.set()
    reader.join(LIVENESS_LIMIT_S)
    assert got == [obj.data[75:78]]
    assert obj.calls[:2] == [(0, 10), (70, 80)]
    assert read_all(handle) == obj.data
    assert sorted(obj.calls) == [(start, start + 10) for start in range(0, 100, 10)], "each chunk once"


def test_a_read_of_a_later_object_is_served_before_earlier_read_ahead(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    order: list[str] = []
    gate = Gate(lambda number, *_: number == 0)

    def record(name: str, inner: Hook | None = None) -> Hook:
        def hook(number: int, start: int, end: int) -> None:
            order.append(f"{name}{start // 10}")
            if inner is not None:
                inner(number, start, end)

        return hook

    first = MemoryObject(payload(50), key="a", hook=record("a", gate))
    second = MemoryObject(payload(20, 1), key="b", hook=record("b"))
    scheduler = schedulers(connections=1)
    scheduler.register(first.info, first.fetch_into, chunk_size=10)
    handle_b = scheduler.register(second.info, second.fetch_into, chunk_size=10)
    gate.wait_entered()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(handle_b)))
    reader.start()
    eventually(lambda: (handle_b.id, 0) in scheduler._queued and scheduler._queued[(handle_b.id, 0)][0] < 2)
    gate.opened.set()
    reader.join(LIVENESS_LIMIT_S)
    assert got == [second.data]
    assert order[:3] == ["a0", "b0", "b1"]


# --- budget -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget_chunks", [1, 2])
@pytest.mark.parametrize("connections", [1, 4])
def test_tiny_budget_several_streams_same_bytes_bounded_memory(
    schedulers: Callable[..., PrefetchScheduler], budget_chunks: int, connections: int
) -> None:
    chunk = 16
    budget = budget_chunks * chunk
    scheduler = schedulers(connections=connections, budget_bytes=budget)
    peaks: list[int] = []

    def sample(*_: int) -> None:
        peaks.append(scheduler.held_bytes)  # includes the chunk this call is fetching

    objects = [
        MemoryObject(payload(size, seed), key=f"k{seed}", hook=sample)
        for seed, size in enumerate([200, 0, 73, 161])
    ]
    handles = [scheduler.register(obj.info, obj.fetch_into, chunk_size=chunk) for obj in objects]
    positions = [0] * len(objects)
    pieces: list[list[bytes]] = [[] for _ in objects]
    rng = random.Random(7)
    while any(position < obj.info.size for position, obj in zip(positions, objects, strict=True)):
        which = rng.randrange(len(objects))
        count = rng.randint(1, 40)
        data = handles[which].read_bytes(positions[which], positions[which] + count, LIVENESS_LIMIT_S)
        pieces[which].append(data)
        positions[which] += len(data)
        assert scheduler.held_bytes <= budget + chunk
    assert [b"".join(parts) for parts in pieces] == [obj.data for obj in objects]
    assert max(peaks) <= budget + chunk, "read-ahead stays within the budget, plus the demanded chunk"
    for handle in handles:
        handle.close()
    eventually(lambda: scheduler.held_bytes == 0)


def test_concurrent_readers_with_a_one_chunk_budget_all_finish(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    chunk = 8
    scheduler = schedulers(connections=2, budget_bytes=chunk)
    objects = [MemoryObject(payload(97 + seed, seed), key=f"k{seed}") for seed in range(4)]
    handles = [scheduler.register(obj.info, obj.fetch_into, chunk_size=chunk) for obj in objects]
    failures: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        obj, handle = objects[seed], handles[seed]
        try:
            for _ in range(60):
                start = rng.randrange(obj.info.size)
                end = start + rng.randint(1, 3 * chunk)
                assert handle.read_bytes(start, end, LIVENESS_LIMIT_S) == obj.data[start:end]
            assert read_all(handle) == obj.data
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LIVENESS_LIMIT_S)
    assert not any(thread.is_alive() for thread in threads), "a reader made no progress"
    assert failures == []


def test_read_ahead_pauses_when_the_budget_is_full_and_resumes_as_the_reader_moves(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    obj = MemoryObject(payload(100))
    scheduler = schedulers(connections=2, budget_bytes=30)
    refused: set[str] = set()  # the workers that asked for a job with the budget full and got none
    next_job = scheduler._next_job

    def next_job_or_pause() -> tuple[ObjectHandle, int] | None:
        job = next_job()  # a worker calls this holding the scheduler's lock
        if job is None and scheduler._queued and scheduler.held_bytes == 30:
            refused.add(threading.current_thread().name)
        return job

    scheduler._next_job = next_job_or_pause  # type: ignore[method-assign]
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    # Paused means every worker asked for the next chunk once the budget was full and was given none;
    # a worker that oversteps shows up as a fourth fetch instead.
    eventually(lambda: len(refused) == scheduler.connections or len(obj.calls) > 3)
    assert len(obj.calls) == 3 and scheduler.held_bytes == 30, "read-ahead paused at the budget"
    assert handle.read_bytes(0, 10, LIVENESS_LIMIT_S) == obj.data[:10]
    eventually(lambda: len(obj.calls) == 4)  # the consumed chunk made room for the next
    assert handle.buffer.state(0) == ChunkState.EMPTY
    assert read_all(handle) == obj.data
    assert scheduler.held_bytes <= 30


def test_budget_smaller_than_a_chunk_still_makes_progress(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    obj = MemoryObject(payload(57))
    scheduler = schedulers(connections=3, budget_bytes=0)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=8)
    assert read_all(handle) == obj.data
    assert handle.read_bytes(3, 20, LIVENESS_LIMIT_S) == obj.data[3:20], "evicted chunks are fetched again"


def test_a_pinned_chunk_is_never_evicted(schedulers: Callable[..., PrefetchScheduler]) -> None:
    obj = MemoryObject(payload(40))
    other = MemoryObject(payload(40, 1), key="other")
    scheduler = schedulers(connections=1, budget_bytes=10)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    view = handle.view(LIVENESS_LIMIT_S)  # pins every chunk
    other_handle = scheduler.register(other.info, other.fetch_into, chunk_size=10)
    assert read_all(other_handle) == other.data
    assert handle.buffer.states() == [ChunkState.READY] * 4
    assert bytes(view) == obj.data


# --- errors -----------------------------------------------------------------------------------------


def test_a_failed_fetch_reaches_its_reader_and_other_ranges_still_read(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    original = RetriesExhaustedError(
        "oss://bucket/model.bin: 503 SlowDown 5 times", bucket="bucket", range=(20, 30)
    )

    def fail_chunk_2(number: int, start: int, end: int) -> None:
        if start == 20:
            raise original

    obj = MemoryObject(payload(50), hook=fail_chunk_2)
    scheduler = schedulers()
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    for _ in range(2):  # sticky: every reader of those bytes gets it
        with pytest.raises(RetriesExhaustedError) as caught:
            handle.read_bytes(15, 25, LIVENESS_LIMIT_S)
        assert caught.value.__cause__ is original
        assert caught.value is not original
        assert str(caught.value) == str(original) and caught.value.range == (20, 30)
    assert handle.read_bytes(0, 20, LIVENESS_LIMIT_S) == obj.data[:20]
    assert handle.read_bytes(30, 50, LIVENESS_LIMIT_S) == obj.data[30:]
    assert handle.buffer.state(2) == ChunkState.FAILED


def test_a_foreign_exception_is_wrapped_with_the_object_named(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    def broken(number: int, start: int, end: int) -> None:
        raise OSError("disk on fire")

    obj = MemoryObject(payload(10), hook=broken)
    handle = schedulers().register(obj.info, obj.fetch_into, chunk_size=10)
    with pytest.raises(ConnectorError, match=r"oss://bucket/model\.bin") as caught:
        read_all(handle)
    # Not an error of the package's own: the base class, naming the object and the range, with the cause.
    assert type(caught.value) is ConnectorError
    assert (caught.value.bucket, caught.value.key, caught.value.range) == ("bucket", "model.bin", (0, 10))
    assert isinstance(caught.value.__cause__, OSError)


def test_wrong_object_crc_is_an_integrity_error_on_every_later_read(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    obj = MemoryObject(payload(35), crc=12345)
    handle = schedulers().register(obj.info, obj.fetch_into, chunk_size=10)
    with pytest.raises(IntegrityError) as caught:
        read_all(handle)
    message = str(caught.value)
    assert (
        "oss://bucket/model.bin" in message
        and f"{12345:#018x}" in message
        and f"{crc64(obj.data):#018x}" in message
    )
    assert (caught.value.bucket, caught.value.key) == ("bucket", "model.bin")
    with pytest.raises(IntegrityError):
        handle.read_bytes(0, 1, LIVENESS_LIMIT_S)
    with pytest.raises(IntegrityError):
        handle.view(LIVENESS_LIMIT_S)


def test_a_chunk_crc_that_lies_fails_the_object_check(schedulers: Callable[..., PrefetchScheduler]) -> None:
    obj = MemoryObject(payload(30), hook=lambda number, start, end: 7 if start == 10 else None)
    handle = schedulers().register(obj.info, obj.fetch_into, chunk_size=10)
    with pytest.raises(IntegrityError):
        handle.view(LIVENESS_LIMIT_S)


def test_crc_is_combined_without_rereading_and_unknown_crc_is_not_an_error(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    obj = MemoryObject(payload(1000), crc=False)
    handle = schedulers().register(obj.info, obj.fetch_into, chunk_size=7)
    assert bytes(handle.view(LIVENESS_LIMIT_S)) == obj.data
    assert handle.buffer.actual_crc64 == crc64(obj.data)


def test_a_refetched_chunk_with_a_different_crc_is_an_integrity_error(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    seen: set[int] = set()

    def lie_on_second_fetch_of_chunk_0(number: int, start: int, end: int) -> int | None:
        if start == 0 and 0 in seen:
            return 99
        seen.add(start)
        return None

    obj = MemoryObject(payload(30), hook=lie_on_second_fetch_of_chunk_0)
    handle = schedulers(connections=1, budget_bytes=10).register(obj.info, obj.fetch_into, chunk_size=10)
    # One chunk at a time through a one-chunk budget: chunk 0 is evicted on the way.
    assert b"".join(handle.read_bytes(i, i + 10, LIVENESS_LIMIT_S) for i in (0, 10, 20)) == obj.data
    with pytest.raises(IntegrityError, match="fetched again"):
        handle.read_bytes(0, 5, LIVENESS_LIMIT_S)
    with pytest.raises(IntegrityError):
        handle.read_bytes(20, 25, LIVENESS_LIMIT_S)


def test_a_fetch_that_never_returns_times_the_reader_out(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    gate = Gate(lambda number, start, end: start == 10)
    obj = MemoryObject(payload(30), hook=gate)
    handle = schedulers().register(obj.info, obj.fetch_into, chunk_size=10)
    try:
        with pytest.raises(RequestTimeoutError) as caught:
            handle.read_bytes(5, 15, timeout_s=0.1)
        assert isinstance(caught.value, TimeoutError)
        assert (caught.value.bucket, caught.value.key, caught.value.range) == (
            "bucket",
            "model.bin",
            (10, 20),
        )
        assert "wait_timeout_s" in str(caught.value)
        assert handle.read_bytes(20, 30, LIVENESS_LIMIT_S) == obj.data[20:]
    finally:
        gate.opened.set()
    assert read_all(handle) == obj.data


# --- lifecycle --------------------------------------------------------------------------------------


def prefetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(THREAD_PREFIX)]


def test_close_while_a_reader_waits_wakes_it_and_leaves_no_thread() -> None:
    before = set(prefetch_threads())
    gate = Gate(lambda number, start, end: start == 0)
    obj = MemoryObject(payload(30), hook=gate)
    scheduler = PrefetchScheduler(connections=3, close_timeout_s=0.2)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            handle.read_bytes(0, 5, LIVENESS_LIMIT_S)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    gate.wait_entered()
    eventually(lambda: handle.buffer.pinned(0))  # the reader is waiting for chunk 0
    scheduler.close()
    thread.join(LIVENESS_LIMIT_S)
    assert len(errors) == 1 and isinstance(errors[0], ClosedError), errors
    assert "closed" in str(errors[0]) and "oss://bucket/model.bin" in str(errors[0])
    gate.opened.set()  # the worker stuck in fetch_into returns, sees the close, and exits
    mine = set(prefetch_threads()) - before
    for leftover in mine:
        leftover.join(LIVENESS_LIMIT_S)
    assert not (set(prefetch_threads()) - before)
    eventually(lambda: scheduler.held_bytes == 0)
    scheduler.close()  # idempotent
    with pytest.raises(ClosedError):
        scheduler.register(obj.info, obj.fetch_into)


def test_close_joins_idle_workers() -> None:
    before = set(prefetch_threads())
    obj = MemoryObject(payload(30))
    scheduler = PrefetchScheduler(connections=4)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    assert read_all(handle) == obj.data
    # Each worker starts the next (one Thread.start() hand-off before the first fetch, not four).
    eventually(lambda: len(set(prefetch_threads()) - before) == 4)
    scheduler.close()
    assert not (set(prefetch_threads()) - before)


def test_every_worker_fetches_at_once() -> None:
    # The workers start one after another; all of them are up and fetching together, none left out.
    connections = 6
    together = threading.Barrier(connections, timeout=LIVENESS_LIMIT_S)
    inside: set[str] = set()

    def meet(number: int, start: int, end: int) -> None:
        inside.add(threading.current_thread().name)
        together.wait()  # breaks (failing the fetch, and the read below) unless all are inside at once

    obj = MemoryObject(
        payload(60),
        hook=lambda number, start, end: meet(number, start, end) if number < connections else None,
    )
    with PrefetchScheduler(connections=connections) as scheduler:
        handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
        assert read_all(handle) == obj.data
    assert len(inside) == connections


def test_unregistering_cancels_queued_chunks_and_frees_memory(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    gate = Gate(lambda number, start, end: number == 0)
    first = MemoryObject(payload(50), key="a", hook=gate)
    second = MemoryObject(payload(20, 1), key="b")
    scheduler = schedulers(connections=1)
    handle_a = scheduler.register(first.info, first.fetch_into, chunk_size=10)
    handle_b = scheduler.register(second.info, second.fetch_into, chunk_size=10)
    gate.wait_entered()
    handle_a.close()
    handle_a.close()  # idempotent
    gate.opened.set()
    assert read_all(handle_b) == second.data
    assert first.calls == [(0, 10)], "nothing of a closed object is fetched after its close"
    eventually(lambda: scheduler.held_bytes == 20)
    assert handle_a.buffer.states() == [ChunkState.EMPTY] * 5
    with pytest.raises(ClosedError, match="closed"):
        handle_a.read_bytes(0, 1, LIVENESS_LIMIT_S)
    handle_b.close()
    assert scheduler.held_bytes == 0


def test_the_queue_does_not_grow_with_closed_objects(schedulers: Callable[..., PrefetchScheduler]) -> None:
    scheduler = schedulers(connections=1, budget_bytes=0)  # no read-ahead: queued chunks stay queued
    for seed in range(20):
        obj = MemoryObject(payload(1000, seed), key=f"k{seed}")
        scheduler.register(obj.info, obj.fetch_into, chunk_size=10).close()
    assert len(scheduler._heap) <= 64 + 100
    assert not scheduler._queued


def test_view_is_the_whole_object_read_only_and_memory_is_released_after_close(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    obj = MemoryObject(payload(95))
    scheduler = schedulers()
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    view = handle.view(LIVENESS_LIMIT_S)
    assert view.readonly and bytes(view) == obj.data
    with pytest.raises(TypeError):
        view[0] = 1  # type: ignore[index]
    assert scheduler.held_bytes == 95
    handle.close()
    assert scheduler.held_bytes == 0
    assert handle.buffer.states() == [ChunkState.EMPTY] * 10
    assert bytes(view) == obj.data, "a view kept past close stays valid"


def test_zero_byte_object(schedulers: Callable[..., PrefetchScheduler]) -> None:
    obj = MemoryObject(b"")
    handle = schedulers().register(obj.info, obj.fetch_into, chunk_size=10)
    assert read_all(handle) == b"" and bytes(handle.view(LIVENESS_LIMIT_S)) == b""
    assert handle.readinto(0, memoryview(bytearray(4)), LIVENESS_LIMIT_S) == 0
    assert obj.calls == []
    wrong = MemoryObject(b"", crc=1)
    with pytest.raises(IntegrityError):
        read_all(schedulers().register(wrong.info, wrong.fetch_into))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_refetches_what_was_in_flight_with_its_own_workers(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    parent = os.getpid()
    gate = Gate(lambda number, start, end: start == 50 and os.getpid() == parent)
    obj = MemoryObject(payload(80), hook=gate)
    scheduler = schedulers(connections=1)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    gate.wait_entered()  # the parent's only worker is inside fetch_into for chunk 5
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            code = 0 if read_all(handle) == obj.data and prefetch_threads() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    gate.opened.set()
    assert read_all(handle) == obj.data


def test_dropped_handles_free_their_memory_via_the_stream_finalizer(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    # The handle is owned by the scheduler until unregistered; the stream's finalizer does that (see
    # test_stream); here: unregistering through the scheduler directly is enough to free everything.
    obj = MemoryObject(payload(40))
    scheduler = schedulers()
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    assert read_all(handle) == obj.data
    scheduler.unregister(handle)
    del handle
    gc.collect()
    assert scheduler.held_bytes == 0 and not scheduler._handles


def test_invalid_settings_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PrefetchScheduler(connections=0)
    with pytest.raises(ValueError, match="None for no limit"):
        PrefetchScheduler(budget_bytes=-1)
    with pytest.raises(ValueError, match="negative"):
        ObjectInfo("bucket", "k", -1, '"e"', 0.0)
    with pytest.raises(ValueError, match="CRC-64"):
        ObjectInfo("bucket", "k", 1, '"e"', 0.0, crc64=1 << 64)
    assert ObjectInfo("bucket", "dir/k", 1, '"e"', 0.0).uri == "oss://bucket/dir/k"


def test_a_fetch_failing_after_its_object_was_closed_is_dropped_quietly(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    gate = Gate(lambda number, start, end: number == 0)

    def fail_after_gate(number: int, start: int, end: int) -> None:
        gate(number, start, end)
        raise RetriesExhaustedError("gave up")

    obj = MemoryObject(payload(20), hook=fail_after_gate)
    scheduler = schedulers(connections=1)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    gate.wait_entered()
    handle.close()
    gate.opened.set()
    eventually(lambda: scheduler.held_bytes == 0)
    assert handle.buffer.states() == [ChunkState.EMPTY, ChunkState.EMPTY]


# --- reads delivered straight into the reader's buffer ----------------------------------------------


def test_a_read_covering_unfetched_chunks_lands_them_in_the_readers_buffer(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    gate = Gate(lambda number, *_: number == 0)  # read-ahead holds chunk 0; the rest are still EMPTY
    obj = MemoryObject(payload(95), hook=gate)
    scheduler = schedulers(connections=1)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    gate.wait_entered()
    dest = bytearray(90)
    reader = threading.Thread(target=lambda: handle.readinto(3, memoryview(dest), LIVENESS_LIMIT_S))
    reader.start()
    eventually(lambda: all(handle.buffer.is_delivery(i) for i in range(1, 9)))  # the whole chunks of [3, 93)
    gate.opened.set()
    reader.join(LIVENESS_LIMIT_S)
    assert bytes(dest) == obj.data[3:93]
    # Chunks 1..8 went to the reader: our buffer holds none of them, yet each was fetched once and its
    # CRC-64 counts towards the object's check (done once chunk 9 comes in by read-ahead).
    assert [handle.buffer.state(i) for i in range(1, 9)] == [ChunkState.EMPTY] * 8
    assert sorted(obj.calls) == [(i * 10, min(95, i * 10 + 10)) for i in range(10)]
    eventually(lambda: handle.buffer.actual_crc64 == crc64(obj.data))
    assert handle.buffer.held_bytes == scheduler.held_bytes == 15  # chunks 0 and 9 only
    assert handle.read_bytes(0, 95, LIVENESS_LIMIT_S) == obj.data  # delivered chunks are fetched again


def test_a_delivered_chunk_with_a_lying_crc_fails_the_read(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    obj = MemoryObject(payload(60), hook=lambda number, start, end: 7 if start == 30 else None)
    handle = schedulers(connections=1).register(obj.info, obj.fetch_into, chunk_size=10)
    with pytest.raises(IntegrityError, match=r"oss://bucket/model\.bin"):
        handle.readinto(0, memoryview(bytearray(60)), LIVENESS_LIMIT_S)
    with pytest.raises(IntegrityError):
        handle.read_bytes(0, 1, LIVENESS_LIMIT_S)


def test_a_failed_delivery_raises_and_the_other_ranges_still_read(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    def fail_chunk_3(number: int, start: int, end: int) -> None:
        if start == 30:
            raise RetriesExhaustedError("503 SlowDown 5 times", bucket="bucket", range=(30, 40))

    obj = MemoryObject(payload(60), hook=fail_chunk_3)
    handle = schedulers().register(obj.info, obj.fetch_into, chunk_size=10)
    with pytest.raises(RetriesExhaustedError):
        handle.readinto(0, memoryview(bytearray(60)), LIVENESS_LIMIT_S)
    dest = bytearray(30)
    assert handle.readinto(0, memoryview(dest), LIVENESS_LIMIT_S) == 30 and bytes(dest) == obj.data[:30]
    assert handle.read_bytes(40, 60, LIVENESS_LIMIT_S) == obj.data[40:]


def test_closing_during_a_delivered_read_waits_for_the_worker_writing_into_the_buffer(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    busy = Gate(lambda number, *_: number == 0)
    first = MemoryObject(payload(10), key="first", hook=busy)
    writing = Gate(lambda number, *_: number == 0)
    second = MemoryObject(payload(50, 3), key="second", hook=writing)
    scheduler = schedulers(connections=1)
    scheduler.register(first.info, first.fetch_into, chunk_size=10)
    busy.wait_entered()  # the only worker is busy: every chunk of `second` is still EMPTY when read
    handle = scheduler.register(second.info, second.fetch_into, chunk_size=10)
    outcome: list[BaseException | int] = []

    def reader() -> None:
        try:
            outcome.append(handle.readinto(0, memoryview(bytearray(50)), LIVENESS_LIMIT_S))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    eventually(lambda: handle.buffer.is_delivery(0))
    busy.opened.set()
    writing.wait_entered()  # the worker is writing chunk 0 into the reader's buffer
    scheduler.unregister(handle)
    thread.join(0.3)
    assert thread.is_alive(), "readinto returned while a worker could still write into its buffer"
    writing.opened.set()
    thread.join(LIVENESS_LIMIT_S)
    assert len(outcome) == 1 and isinstance(outcome[0], ClosedError), outcome
    assert second.calls == [(0, 10)]  # the other deliveries were withdrawn, never fetched
    assert scheduler.held_bytes == 10  # `first`'s chunk only: a delivery never counts


def test_delivered_reads_are_outside_the_budget(schedulers: Callable[..., PrefetchScheduler]) -> None:
    obj = MemoryObject(payload(200))
    scheduler = schedulers(connections=3, budget_bytes=20)
    handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], scheduler.held_bytes)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        dest = bytearray(200)
        assert handle.readinto(0, memoryview(dest), LIVENESS_LIMIT_S) == 200
    finally:
        stop.set()
        sampler.join()
    assert bytes(dest) == obj.data and peak[0] <= 20


def test_read_ahead_in_order_fetches_in_the_given_order(schedulers: Callable[..., PrefetchScheduler]) -> None:
    first = MemoryObject(payload(30), key="a")
    second = MemoryObject(payload(30, 1), key="b")
    later = MemoryObject(payload(20, 2), key="c")
    scheduler = schedulers(connections=1)
    calls: list[tuple[str, int]] = []

    def recording(obj: MemoryObject) -> Callable[[int, int, memoryview], int]:
        def fetch_into(start: int, end: int, dest: memoryview) -> int:
            calls.append((obj.info.key, start))
            return obj.fetch_into(start, end, dest)

        return fetch_into

    with scheduler.lock:  # nothing starts before the order is set
        a = scheduler.register(first.info, recording(first), chunk_size=10, first_chunk_first=True)
        b = scheduler.register(second.info, recording(second), chunk_size=10, first_chunk_first=True)
        scheduler.read_ahead_in_order([(a, 0), (b, 0), (b, 2), (a, 2), (b, 1), (a, 1)])
        c = scheduler.register(later.info, recording(later), chunk_size=10)
    eventually(lambda: len(calls) == 8)  # no reader: read-ahead alone, in its order
    assert read_all(c) == later.data and read_all(a) == first.data and read_all(b) == second.data
    # Headers first, then the given order; an object registered afterwards comes after the sequence.
    assert calls[:6] == [("a", 0), ("b", 0), ("b", 20), ("a", 20), ("b", 10), ("a", 10)]
    assert sorted(calls[6:]) == [("c", 0), ("c", 10)]


def test_without_read_ahead_only_the_header_and_the_chunks_queued_later_are_fetched(
    schedulers: Callable[..., PrefetchScheduler],
) -> None:
    # A fleet node's way: its exchange queues its own chunks as it goes; reads fetch the others.
    obj = MemoryObject(payload(60))
    scheduler = schedulers(connections=1)
    handle = scheduler.register(
        obj.info, obj.fetch_into, chunk_size=10, first_chunk_first=True, read_ahead=False
    )
    eventually(lambda: handle.buffer.state(0) == ChunkState.READY)
    scheduler.queue_read_ahead([(handle, 4), (handle, 2), (handle, 0)])  # a READY chunk is not fetched again
    eventually(lambda: len(obj.calls) == 3)
    assert obj.calls == [(0, 10), (40, 50), (20, 30)]  # the header, then in the order given
    assert [handle.buffer.state(i) for i in (1, 3, 5)] == [ChunkState.EMPTY] * 3  # nothing else read ahead
    dest = bytearray(10)
    assert handle.readinto(30, memoryview(dest), LIVENESS_LIMIT_S) == 10 and bytes(dest) == obj.data[30:40]
    assert read_all(handle) == obj.data and sorted(obj.calls) == [(i * 10, i * 10 + 10) for i in range(6)]


def test_a_read_right_after_register_has_every_chunk_delivered() -> None:
    obj = MemoryObject(payload(95))
    # A delay no test outlasts: the read below always comes first (by default it is 5 ms).
    with PrefetchScheduler(connections=3, read_ahead_delay_s=60) as scheduler:
        handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
        dest = bytearray(95)
        assert handle.readinto(0, memoryview(dest), LIVENESS_LIMIT_S) == 95 and bytes(dest) == obj.data
        assert sorted(obj.calls) == [(i * 10, min(95, i * 10 + 10)) for i in range(10)]  # each once
        assert handle.buffer.held_bytes == scheduler.held_bytes == 0  # all went to the reader
        assert handle.buffer.actual_crc64 == crc64(obj.data)


def test_deferred_read_ahead_starts_by_itself_and_skips_what_was_read() -> None:
    obj = MemoryObject(payload(50))
    with PrefetchScheduler(connections=2, read_ahead_delay_s=0.5) as scheduler:
        handle = scheduler.register(obj.info, obj.fetch_into, chunk_size=10)
        assert handle.readinto(0, memoryview(bytearray(20)), LIVENESS_LIMIT_S) == 20  # chunks 0-1 delivered
        eventually(lambda: len(obj.calls) == 5)  # read-ahead of the other three, with no reader
        assert sorted(obj.calls) == [(i * 10, i * 10 + 10) for i in range(5)]
        assert [handle.buffer.state(i) for i in range(5)] == [ChunkState.EMPTY] * 2 + [ChunkState.READY] * 3
