"""``OssStream`` checked step by step against ``io.BytesIO`` (and text mode against ``TextIOWrapper``)."""

from __future__ import annotations

import gc
import io
import threading
from collections.abc import Callable, Iterator

import pytest
from fetch_harness import LIVENESS_LIMIT_S, Gate, MemoryObject, eventually, payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ossmodelconnector.cache.chunk_state import ChunkState
from ossmodelconnector.errors import ClosedError, IntegrityError, RequestTimeoutError, RetriesExhaustedError
from ossmodelconnector.fetch.prefetch import PrefetchScheduler
from ossmodelconnector.fetch.stream import OssStream, open_stream


@pytest.fixture
def scheduler() -> Iterator[PrefetchScheduler]:
    with PrefetchScheduler(connections=2) as made:
        yield made


def outcome(call: Callable[[], object]) -> tuple[str, object]:
    """What a call returned, or the type and message of what it raised, for side-by-side comparison."""
    try:
        return ("value", call())
    except Exception as exc:
        return ("error", (type(exc), str(exc)))


@st.composite
def objects(draw: st.DrawFn) -> tuple[bytes, int]:
    """Bytes (newline-rich, for readline) of a size at a chunk boundary or anywhere, and a chunk size."""
    chunk_size = draw(st.sampled_from([1, 2, 3, 7, 16, 64]))
    multiple = draw(st.integers(0, 4))
    size = draw(
        st.one_of(
            st.sampled_from([0, 1]),
            st.integers(-1, 1).map(lambda delta: max(0, multiple * chunk_size + delta)),
            st.integers(0, 5 * chunk_size),
        )
    )
    data = draw(st.binary(min_size=size, max_size=size).map(lambda raw: raw.replace(b"\x00", b"\n")))
    return data, chunk_size


class StreamVersusBytesIO(RuleBasedStateMachine):
    """Every read, seek and tell on an OssStream returns exactly what io.BytesIO returns."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler: PrefetchScheduler | None = None

    @initialize(case=objects(), connections=st.integers(1, 3), budget_chunks=st.sampled_from([None, 1, 2]))
    def open_both(self, case: tuple[bytes, int], connections: int, budget_chunks: int | None) -> None:
        data, chunk_size = case
        budget = None if budget_chunks is None else budget_chunks * chunk_size
        self.scheduler = PrefetchScheduler(connections, budget)
        self.obj = MemoryObject(data)
        self.stream = OssStream(self.obj.info, self.obj.fetch_into, self.scheduler, chunk_size=chunk_size)
        self.model = io.BytesIO(data)
        self.size = len(data)

    def teardown(self) -> None:
        if self.scheduler is not None:
            self.stream.close()
            self.scheduler.close()

    def same(self, call: Callable[[io.BufferedIOBase], object]) -> None:
        assert outcome(lambda: call(self.stream)) == outcome(lambda: call(self.model))

    @rule(size=st.one_of(st.none(), st.integers(-2, 80)))
    def read(self, size: int | None) -> None:
        self.same(lambda f: f.read(size))

    @rule()
    def read_all(self) -> None:
        self.same(lambda f: f.read())

    @rule(size=st.integers(-1, 80))
    def read1(self, size: int) -> None:
        self.same(lambda f: f.read1(size))

    @rule(length=st.integers(0, 80))
    def readinto(self, length: int) -> None:
        def call(f: io.BufferedIOBase) -> tuple[int, bytes]:
            target = bytearray(b"\xee" * length)
            count = f.readinto(target)
            return count, bytes(target)

        self.same(call)

    @rule(size=st.one_of(st.none(), st.integers(-1, 40)))
    def readline(self, size: int | None) -> None:
        self.same(lambda f: f.readline(size))

    @rule()
    def next_line(self) -> None:
        self.same(lambda f: next(iter(f), None))

    @rule(
        offset=st.integers(-100, 100),
        whence=st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END, 3]),
    )
    def seek(self, offset: int, whence: int) -> None:
        self.same(lambda f: f.seek(offset, whence))

    @rule()
    def readlines(self) -> None:
        self.same(lambda f: f.readlines())

    @invariant()
    def same_position(self) -> None:
        if self.scheduler is not None:
            assert self.stream.tell() == self.model.tell()

    @precondition(lambda self: self.scheduler is not None)
    @invariant()
    def memory_within_budget(self) -> None:
        assert self.scheduler is not None
        budget = self.scheduler.budget_bytes
        if budget is not None:
            assert self.scheduler.held_bytes <= budget + self.stream._handle.chunk_size


StreamVersusBytesIO.TestCase.settings = settings(
    max_examples=150, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_stream_matches_bytesio = StreamVersusBytesIO.TestCase


@st.composite
def texts(draw: st.DrawFn) -> tuple[str, int]:
    alphabet = st.sampled_from(["a", "b", "é", "€", "\U0001f600", "\n", "\r\n", "\r"])
    return "".join(draw(st.lists(alphabet, max_size=60))), draw(st.sampled_from([1, 2, 3, 5, 64]))


@given(
    case=texts(),
    operations=st.lists(
        st.tuples(
            st.sampled_from(["read", "readline", "tell", "seek_back", "seek_end"]), st.integers(-1, 12)
        ),
        max_size=20,
    ),
)
@settings(max_examples=100, deadline=None)
def test_text_mode_matches_textiowrapper(case: tuple[str, int], operations: list[tuple[str, int]]) -> None:
    text, chunk_size = case
    data = text.encode("utf-8")
    obj = MemoryObject(data)
    with PrefetchScheduler(connections=2) as scheduler:
        stream = open_stream(obj.info, obj.fetch_into, scheduler, binary=False, chunk_size=chunk_size)
        model = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        assert isinstance(stream, io.TextIOWrapper)
        cookies = [0]
        with stream, model:
            for name, argument in operations:
                if name == "read":
                    assert stream.read(argument) == model.read(argument)
                elif name == "readline":
                    assert stream.readline(argument) == model.readline(argument)
                elif name == "tell":
                    cookie = stream.tell()
                    assert cookie == model.tell()
                    cookies.append(cookie)
                elif name == "seek_back":
                    cookie = cookies[argument % len(cookies)]
                    assert stream.seek(cookie) == model.seek(cookie)
                else:
                    assert stream.seek(0, io.SEEK_END) == model.seek(0, io.SEEK_END)
            assert stream.read() == model.read()


def test_text_mode_decodes_utf8_across_chunk_boundaries(scheduler: PrefetchScheduler) -> None:
    text = "naïve €uro 😀\nsecond line\n" * 50
    obj = MemoryObject(text.encode("utf-8"))
    with open_stream(obj.info, obj.fetch_into, scheduler, binary=False, chunk_size=3) as stream:
        assert stream.readline() == "naïve €uro 😀\n"
        assert stream.read() == text[len("naïve €uro 😀\n") :]


# --- the file-object surface ------------------------------------------------------------------------


def test_description_and_capabilities(scheduler: PrefetchScheduler) -> None:
    obj = MemoryObject(payload(10), key="dir/model.safetensors")
    with OssStream(obj.info, obj.fetch_into, scheduler) as stream:
        assert stream.name == "oss://bucket/dir/model.safetensors"
        assert stream.size == 10 and stream.mode == "rb"
        assert stream.readable() and stream.seekable() and not stream.writable()
        assert "oss://bucket/dir/model.safetensors" in repr(stream)
        with pytest.raises(io.UnsupportedOperation):
            stream.write(b"x")
        with pytest.raises(io.UnsupportedOperation):
            stream.fileno()
        with pytest.raises(io.UnsupportedOperation):
            stream.truncate(0)
        assert stream.peek(1)[:1] == obj.data[:1] and stream.tell() == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.read(),
        lambda s: s.read(1),
        lambda s: s.readinto(bytearray(2)),
        lambda s: s.readline(),
        lambda s: s.seek(0),
        lambda s: s.tell(),
        lambda s: s.readable(),
        lambda s: s.seekable(),
        lambda s: s.mmap(),
        lambda s: next(iter(s)),
        lambda s: s.readlines(),
        lambda s: s.__enter__(),
    ],
)
def test_every_method_raises_after_close(
    scheduler: PrefetchScheduler, call: Callable[[OssStream], object]
) -> None:
    obj = MemoryObject(payload(10))
    stream = OssStream(obj.info, obj.fetch_into, scheduler)
    stream.close()
    stream.close()  # idempotent
    assert stream.closed
    with pytest.raises(ValueError, match="closed file"):
        call(stream)


def test_readinto_copies_into_any_writable_buffer(scheduler: PrefetchScheduler) -> None:
    import numpy as np

    obj = MemoryObject(payload(100))
    with OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=7) as stream:
        target = np.zeros(10, dtype=np.uint32)
        assert stream.readinto(target) == 40
        assert target.tobytes() == obj.data[:40]
        assert stream.readinto(memoryview(bytearray(70))[5:]) == 60
        with pytest.raises(TypeError, match="writable"):
            stream.readinto(b"read-only")


def test_mmap_is_the_whole_object_read_only_and_memory_is_released_after_close(
    scheduler: PrefetchScheduler,
) -> None:
    obj = MemoryObject(payload(1000))
    stream = OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=64)
    view = stream.mmap()
    assert view.readonly and len(view) == 1000 and bytes(view) == obj.data
    with pytest.raises(TypeError):
        view[0] = 0  # type: ignore[index]
    assert stream.mmap() == view and stream.tell() == 0
    handle = stream._handle
    stream.close()
    assert handle.buffer.states() == [ChunkState.EMPTY] * handle.buffer.count
    assert scheduler.held_bytes == 0
    del view


def test_mmap_of_an_empty_object(scheduler: PrefetchScheduler) -> None:
    obj = MemoryObject(b"")
    with OssStream(obj.info, obj.fetch_into, scheduler) as stream:
        assert stream.read() == b"" and bytes(stream.mmap()) == b"" and stream.seek(5) == 5
        assert stream.read(3) == b"" and stream.readline() == b""


def test_mmap_raises_integrity_error(scheduler: PrefetchScheduler) -> None:
    obj = MemoryObject(payload(100), crc=1)
    with OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=30) as stream:
        with pytest.raises(IntegrityError, match=r"oss://bucket/model\.bin"):
            stream.mmap()
        with pytest.raises(IntegrityError):
            stream.read(1)


def test_a_failed_range_raises_and_the_rest_still_reads(scheduler: PrefetchScheduler) -> None:
    original = RetriesExhaustedError("gave up", bucket="bucket", key="model.bin", range=(10, 20))

    def fail(number: int, start: int, end: int) -> None:
        if start == 10:
            raise original

    obj = MemoryObject(payload(30), hook=fail)
    with OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=10) as stream:
        assert stream.read(10) == obj.data[:10]
        with pytest.raises(RetriesExhaustedError) as caught:
            stream.read(5)
        assert caught.value.__cause__ is original
        assert stream.tell() == 10, "a failed read does not move the position"
        stream.seek(20)
        assert stream.read() == obj.data[20:]


def test_a_stalled_fetch_times_out_with_the_range_named(scheduler: PrefetchScheduler) -> None:
    gate = Gate(lambda number, start, end: start == 0)
    obj = MemoryObject(payload(20), hook=gate)
    try:
        with OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=10, wait_timeout_s=0.05) as stream:
            with pytest.raises(RequestTimeoutError) as caught:
                stream.read(1)
            assert caught.value.range == (0, 10) and isinstance(caught.value, TimeoutError)
    finally:
        gate.opened.set()


def test_closing_the_stream_wakes_a_waiting_reader(scheduler: PrefetchScheduler) -> None:
    gate = Gate(lambda number, start, end: start == 0)
    obj = MemoryObject(payload(20), hook=gate)
    stream = OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=10)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            stream.read(1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    gate.wait_entered()
    eventually(lambda: stream._handle.buffer.pinned(0))
    stream.close()
    thread.join(LIVENESS_LIMIT_S)
    gate.opened.set()
    assert len(errors) == 1 and isinstance(errors[0], ClosedError)
    eventually(lambda: scheduler.held_bytes == 0)


def test_a_dropped_stream_is_unregistered_and_its_memory_freed(scheduler: PrefetchScheduler) -> None:
    obj = MemoryObject(payload(50))
    stream = OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=10)
    assert stream.read() == obj.data
    handle = stream._handle
    del stream
    gc.collect()
    assert handle.closed and scheduler.held_bytes == 0 and not scheduler._handles


def test_streams_start_read_ahead_in_the_order_they_were_opened() -> None:
    order: list[str] = []
    gate = Gate(lambda number, start, end: number == 0)

    def log_as(name: str, gated: bool) -> Callable[[int, int, int], None]:
        def hook(number: int, start: int, end: int) -> None:
            order.append(f"{name}{start // 10}")
            if gated:
                gate(number, start, end)

        return hook

    first = MemoryObject(payload(30), key="a", hook=log_as("a", True))
    second = MemoryObject(payload(30, 1), key="b", hook=log_as("b", False))
    with PrefetchScheduler(connections=1) as scheduler:
        stream_a = OssStream(first.info, first.fetch_into, scheduler, chunk_size=10)
        stream_b = OssStream(second.info, second.fetch_into, scheduler, chunk_size=10)
        gate.wait_entered()  # both are registered and nothing is read yet
        gate.opened.set()
        with stream_a, stream_b:
            eventually(lambda: len(order) == 6)
            assert order == ["a0", "a1", "a2", "b0", "b1", "b2"]
            assert stream_a.read() == first.data and stream_b.read() == second.data


def test_opening_on_a_closed_scheduler_fails_clearly() -> None:
    scheduler = PrefetchScheduler(connections=1)
    scheduler.close()
    obj = MemoryObject(payload(5))
    with pytest.raises(ClosedError, match="scheduler is closed"):
        OssStream(obj.info, obj.fetch_into, scheduler)


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f.seek(1.5),
        lambda f: f.seek("1"),
        lambda f: f.seek(0, 1.0),
        lambda f: f.read(1.5),
        lambda f: f.readline("x"),
    ],
)
def test_bad_argument_types_raise_what_bytesio_raises(
    scheduler: PrefetchScheduler, call: Callable[[io.BufferedIOBase], object]
) -> None:
    obj = MemoryObject(payload(10))
    with OssStream(obj.info, obj.fetch_into, scheduler) as stream:
        ours, theirs = outcome(lambda: call(stream)), outcome(lambda: call(io.BytesIO(obj.data)))
        assert ours[0] == theirs[0] == "error"
        assert ours[1][0] is theirs[1][0]  # type: ignore[index]


def test_peek_returns_bytes_ahead_without_moving(scheduler: PrefetchScheduler) -> None:
    obj = MemoryObject(payload(100))
    with OssStream(obj.info, obj.fetch_into, scheduler, chunk_size=10) as stream:
        stream.seek(3)
        assert stream.peek() == obj.data[3:10], "what a buffered reader would hold: to the chunk's end"
        assert stream.peek(25) == obj.data[3:28]
        assert stream.tell() == 3
        stream.seek(100)
        assert stream.peek() == b""
