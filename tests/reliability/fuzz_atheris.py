"""Coverage-guided fuzzing of the XML parsers and the range planner with atheris (run by hand).

::

    pip install atheris   # the `fuzz` extra
    python tests/reliability/fuzz_atheris.py -atheris_runs=200000            # all targets in turn
    python tests/reliability/fuzz_atheris.py list -max_total_time=300       # one target

Not collected by pytest (the hypothesis twins live in ``test_fuzz.py``). A crash is any exception other
than the documented ones; atheris then writes the input to ``crash-<sha1>`` for a regression example.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from xml.etree.ElementTree import ParseError

import atheris

with atheris.instrument_imports():
    from ossmodelconnector.oss.responses import (
        check_body_range,
        object_info_from_headers,
        parse_content_range,
        parse_error,
        parse_list_v2,
    )
    from ossmodelconnector.ranges import chunk_range, chunk_span, clamp_read, plan_chunks


def fuzz_list(data: bytes) -> None:
    with contextlib.suppress(ValueError, ParseError):
        parse_list_v2("bucket", data)


def fuzz_error(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    header = fdp.ConsumeUnicodeNoSurrogates(64)
    with contextlib.suppress(ValueError, ParseError):
        parse_error(fdp.ConsumeBytes(fdp.remaining_bytes()), {"x-oss-err": header} if header else {})


def fuzz_headers(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    values = [fdp.ConsumeUnicodeNoSurrogates(24) for _ in range(5)]
    headers = dict(
        zip(
            ("Content-Length", "ETag", "Last-Modified", "x-oss-hash-crc64ecma", "Content-Range"),
            values,
            strict=True,
        )
    )
    for call in (
        lambda: object_info_from_headers("bucket", "key", headers),
        lambda: parse_content_range(values[4]),
        lambda: check_body_range(
            fdp.ConsumeIntInRange(200, 206), headers, 0, fdp.ConsumeIntInRange(1, 1 << 40)
        ),
    ):
        with contextlib.suppress(ValueError):
            call()


def fuzz_ranges(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    a, b, c = (fdp.ConsumeIntInRange(-(1 << 64), 1 << 64) for _ in range(3))
    small = fdp.ConsumeIntInRange(-1, 1 << 16)  # at most 4096 chunks: the planner, not list building
    for call in (
        lambda: plan_chunks(small, 16 + abs(b) % 4096 if b else 0),
        lambda: chunk_span(a, b, c),
        lambda: chunk_range(a, b, c),
        lambda: clamp_read(a, b, c),
    ):
        with contextlib.suppress(ValueError, IndexError):
            call()


TARGETS: dict[str, Callable[[bytes], None]] = {
    "list": fuzz_list,
    "error": fuzz_error,
    "headers": fuzz_headers,
    "ranges": fuzz_ranges,
}


def fuzz_all(data: bytes) -> None:
    if not data:
        return
    TARGETS[list(TARGETS)[data[0] % len(TARGETS)]](data[1:])


def main() -> None:
    args = sys.argv[1:]
    target = fuzz_all
    if args and args[0] in TARGETS:
        target = TARGETS[args.pop(0)]
    atheris.Setup([sys.argv[0], *args], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
