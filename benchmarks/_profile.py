"""Profile one contender run with py-spy and boil the samples down to tables people read.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;...;leaf COUNT`` per line, one per
thread and stack); :func:`summarize` groups them by thread role and by leaf function. Only threads on the
CPU are sampled (py-spy's default), so a thread blocked in a wait or in ``recv_into`` with the GIL released
shows as nothing: the wait clock of ``_load_child.py`` accounts for those.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _results import markdown_table

DEFAULT_RATE_HZ = 250
ATTACH_S = 1.0
STOP_TIMEOUT_S = 60.0
INSTALL = "pip install py-spy (the [bench] extra); needs ptrace (root, or CAP_SYS_PTRACE in a container)"

BLOCKING = frozenset({"Condition.wait", "Event.wait", "_worker", "Thread.join", "SimpleQueue.get", "start"})
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def missing_profiler() -> str | None:
    """Why py-spy cannot run, with the install command; None when it can."""
    found = shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()
    return None if found else f"`py-spy` is not installed; {INSTALL}"


def start(output: Path, pid: int, rate_hz: int = DEFAULT_RATE_HZ) -> subprocess.Popen[bytes]:
    """Attach ``py-spy record`` to ``pid`` (raw collapsed stacks to ``output``) until :func:`stop`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [spy, "record", "--threads", "--full-filenames", "--format", "raw", "--rate", str(rate_hz)]
    proc = subprocess.Popen(
        [*command, "--pid", str(pid), "-o", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(ATTACH_S)  # py-spy says nothing when it is attached; it needs a moment to start sampling
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a recording started by :func:`start`; py-spy writes its output on SIGINT."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.returncode not in (0, -signal.SIGINT):
        raise RuntimeError(f"py-spy exited with {proc.returncode}: {err.decode(errors='replace')[-500:]}")


def _frame(text: str) -> tuple[str, str]:
    match = _FRAME.match(text.strip())
    if not match:
        return text.strip(), ""
    return match["func"], Path(match["file"]).name


def _role(thread: str) -> str:
    name = thread.partition(": ")[2]
    if name.startswith("ossmodelconnector-prefetch"):
        return "connector prefetch workers"
    if name.startswith(("ossmodelconnector", "oss-fast-list")):
        return "connector prepare and listing threads"
    if name == "memory-sampler":
        return "benchmark memory sampler"
    if name == "MainThread":
        return "main thread (transformers, torch)"
    if name.startswith("ThreadPoolExecutor"):
        return "transformers loader pool"
    return "other threads"


def parse(raw: str) -> list[tuple[str, list[str], int]]:
    """``(thread, frames root-first, samples)`` per line of py-spy's raw output."""
    stacks = []
    for line in raw.splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        parts = body.split(";")
        thread = parts[0] if parts[0].startswith("thread (") else ""
        frames = [p for p in parts if p.endswith(")") and not p.startswith(("thread (", "process "))]
        stacks.append((thread, frames, int(count)))
    return stacks


def summarize(raw: str, top: int = 15) -> str:
    """Markdown: samples per thread role, the top leaf functions, and the package's inclusive hot spots.

    Samples whose leaf is a blocking wait (idle prefetch workers, tqdm's monitor, the sampler) are left
    out: py-spy's idle filter does not recognize a ``Condition.wait`` with a timeout as idle.
    """
    stacks = parse(raw)
    blocked = sum(count for _, frames, count in stacks if frames and _frame(frames[-1])[0] in BLOCKING)
    stacks = [
        (t, frames, count)
        for t, frames, count in stacks
        if not frames or _frame(frames[-1])[0] not in BLOCKING
    ]
    total = sum(count for _, _, count in stacks) or 1
    roles: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for thread, frames, count in stacks:
        roles[_role(thread)] += count
        if frames:
            func, file = _frame(frames[-1])
            leaves[f"`{func}` ({file})"] += count
        seen = set()
        for text in frames:
            func, file = _frame(text)
            if "ossmodelconnector" in text and (func, file) not in seen:
                seen.add((func, file))
                ours[f"`{func}` ({file})"] += count

    def table(title: str, counter: Counter[str], limit: int) -> str:
        rows = [[name, str(n), f"{100 * n / total:.1f}%"] for name, n in counter.most_common(limit)]
        return markdown_table([title, "samples", "share of on-CPU samples"], rows)

    return "\n\n".join(
        [
            f"{total} on-CPU samples ({blocked} more of threads blocked in a wait, left out).",
            table("thread role", roles, 10),
            table("leaf function (self time)", leaves, top),
            table("ossmodelconnector function (inclusive)", ours, top),
        ]
    )
