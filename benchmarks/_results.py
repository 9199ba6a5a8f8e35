"""Write one benchmark's section of ``benchmarks/RESULTS.md``, leaving the other sections alone."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
_HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the benchmark named in its heading, with the command that produced it.\n"
    "Figures are ratios to baselines measured in the same run; machines here are shared and noisy.\n"
)


def machine_line() -> str:
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {python}, {platform.system()}"


def command_line() -> str:
    return " ".join(shlex.quote(arg) for arg in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md with ``body`` plus command, date, machine."""
    text = RESULTS_PATH.read_text() if RESULTS_PATH.exists() else _HEADER
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- {name}:start -->\n## {name}\n\n"
        f"Command: `python {command_line()}`  \nDate: {stamp}  \nMachine: {machine_line()}\n\n"
        f"{body.strip()}\n<!-- {name}:end -->\n"
    )
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS_PATH.write_text(text)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
