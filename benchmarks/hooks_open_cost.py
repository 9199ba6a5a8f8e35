"""What the reader hooks cost a program for files that are NOT in a prepared directory.

One process, one directory registered elsewhere, hooks installed. States are switched between short
batches so that the machine's noise (shared, loaded) hits them alike; each batch is timed in this
thread's CPU time, and each state's median over the batches is reported with its ratio to the baseline
measured in the same run:

- ``open``: the original ``open`` (the hook's ``__wrapped__``) with the audit hook disabled (baseline),
  the hooked ``open`` with the audit hook disabled, and the hooked ``open`` with it enabled (installed);
- ``os.open``: with the audit hook disabled (baseline) and enabled (installed);
- ``registry.lookup``: with nothing registered (baseline) and with one directory registered.

A disabled audit hook is what stays in a process after the last ``uninstall()`` (it cannot be removed);
its cost per audit event is the ``audit hook, disabled`` row (a call with an event it ignores).

    python benchmarks/hooks_open_cost.py [--batches 41] [--number 2000]
"""

from __future__ import annotations

import argparse
import builtins
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _results import markdown_table, median, write_section

from ossmodelconnector import hooks
from ossmodelconnector.cache import registry
from ossmodelconnector.hooks import safety_net


class _ReadyFile:
    size = 1

    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        pass

    def wait_all(self, timeout_s: float | None = None) -> None:
        pass


def _batch_ns(function: Callable[[], object], number: int) -> float:
    # This thread's CPU time (user + system), not wall time: on a shared, loaded machine the time spent
    # waiting for a core is noise, not cost.
    start = time.thread_time_ns()
    for _ in range(number):
        function()
    return (time.thread_time_ns() - start) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=41)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="hooks-bench-"))
    plain = str(workdir / "plain.bin")
    Path(plain).write_bytes(b"x" * 4096)
    registered = workdir / "model" / "weights.safetensors"
    registered.parent.mkdir()
    registered.write_bytes(b"x")

    hooks.install()
    hooked_open = builtins.open
    original_open = hooked_open.__wrapped__  # type: ignore[attr-defined]
    registry.register_file(str(registered), _ReadyFile())

    def with_audit(enabled: bool, function: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            (safety_net.enable if enabled else safety_net.disable)()
            return _batch_ns(function, args.number)

        return run

    def with_registration(present: bool) -> Callable[[], float]:
        def run() -> float:
            if present:
                registry.register_file(str(registered), _ReadyFile())
            else:
                registry.unregister_file(str(registered))
            return _batch_ns(lambda: registry.lookup(plain), args.number * 10)

        return run

    groups: dict[str, dict[str, Callable[[], float]]] = {
        "`open(path, 'rb').close()`": {
            "baseline": with_audit(False, lambda: original_open(plain, "rb").close()),
            "hooked open, audit off": with_audit(False, lambda: hooked_open(plain, "rb").close()),
            "installed": with_audit(True, lambda: hooked_open(plain, "rb").close()),
        },
        "`os.close(os.open(path))`": {
            "baseline": with_audit(False, lambda: os.close(os.open(plain, os.O_RDONLY))),
            "installed": with_audit(True, lambda: os.close(os.open(plain, os.O_RDONLY))),
        },
        "`registry.lookup(path)`": {
            "baseline": with_registration(False),
            "installed": with_registration(True),
        },
        "audit hook, disabled, per event": {
            "baseline": with_audit(False, lambda: None),
            "installed": with_audit(False, lambda: safety_net._audit("import", ())),
        },
    }
    samples: dict[str, dict[str, list[float]]] = {
        name: {s: [] for s in states} for name, states in groups.items()
    }
    try:
        for batch in range(args.batches):
            for name, states in groups.items():
                order = list(states.items())
                if batch % 2:
                    order.reverse()
                for state, run in order:
                    samples[name][state].append(run())
    finally:
        safety_net.enable()
        registry.unregister_file(str(registered))
        hooks.uninstall()

    rows = []
    for name, by_state in samples.items():
        base = median(by_state["baseline"])
        for state, values in by_state.items():
            value = median(values)
            extra = "" if state == "baseline" else f" ({value / base:.2f}x, {value - base:+.0f} ns)"
            rows.append([name, state, f"{value:.0f}{extra}"])
    table = markdown_table(["call on an unrelated path", "state", "ns per call (vs baseline)"], rows)
    print(table)
    write_section(
        "hooks_open_cost",
        f"{table}\n\nThread CPU time per call, median over {args.batches} interleaved batches of "
        f"{args.number} calls (lookups: "
        f"{args.number * 10}); one directory registered elsewhere. `installed` is what every program pays "
        "for an unrelated path while a prepared directory is open: the `open` wrapper (one registry "
        "prefix check) plus the audit hook (one more check per `open` event).",
    )


if __name__ == "__main__":
    main()
