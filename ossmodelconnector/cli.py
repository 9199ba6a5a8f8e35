"""The ``ossmodelconnector`` command: ``run`` prepares a directory and runs a program over it (no-code
mode); ``gc`` removes what processes that died left in shared memory.

::

    ossmodelconnector run [--endpoint E] [--cred-path P] [--config C] [--wait] OSS_URI MODEL_DIR -- CMD...
        connector = OssModelConnector(E or $OSS_ENDPOINT, P or $OSSMC_CRED_PATH or the
                                      OSS_ACCESS_KEY_* variables, C)
        connector.prepare_directory(OSS_URI, MODEL_DIR)        this process owns the download
        CMD runs with OSSMC_PREPARED_DIRS=MODEL_DIR and PYTHONPATH=<_startup>:$PYTHONPATH,
            so every Python process under it (children, grandchildren, spawn, fork, python -m, entry
            points) attaches to the cache at start-up; without the credential variables
            (OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_SESSION_TOKEN, OSSMC_CRED_PATH): the
            wrapper fetches, CMD only reads the cache
        SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 are passed on to CMD (not SIGINT/SIGQUIT from a
            terminal's Ctrl-C / Ctrl-\\: those reach CMD directly, in the same foreground process group)
        exit: CMD's exit code (128 + N when a signal N ended it); the cache is released first

    ossmodelconnector gc [--cache-dir DIR]...
        removes this user's state tables whose owner died, data segments no live process holds, and
        unlocked prepare locks from /dev/shm (and cacheDir, and each DIR); prints each file and the bytes
        freed. Files a live process holds are never removed (cache/sweep.py; every prepare does the same)

Example::

    ossmodelconnector run oss://models/qwen2-7b/ /tmp/qwen2-7b -- \\
        vllm serve /tmp/qwen2-7b --tensor-parallel-size 4
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from ossmodelconnector.cache.sweep import sweep
from ossmodelconnector.config import load_config
from ossmodelconnector.environment import (
    CONFIG_PATH_ENV,
    CRED_PATH_ENV,
    ENV_PREFIX,
    LEGACY_ENV_PREFIX,
    environment_value,
)
from ossmodelconnector.errors import ConnectorError
from ossmodelconnector.oss.credentials import ENV_ACCESS_KEY_ID, ENV_ACCESS_KEY_SECRET, ENV_SESSION_TOKEN
from ossmodelconnector.startup import OSS_ENDPOINT_ENV, connector_from_environment

__all__ = [
    "CREDENTIAL_VARIABLES",
    "FORWARDED_SIGNALS",
    "child_environment",
    "main",
    "program_environment",
    "startup_dir",
]

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""Signals ``run`` passes on to the program instead of acting on them itself."""

CREDENTIAL_VARIABLES = (
    ENV_ACCESS_KEY_ID,
    ENV_ACCESS_KEY_SECRET,
    ENV_SESSION_TOKEN,
    CRED_PATH_ENV,
    LEGACY_ENV_PREFIX + CRED_PATH_ENV.removeprefix(ENV_PREFIX),
)
"""The variables credentials are read from (``oss/credentials.py``, ``environment.py``): ``run`` keeps
them from the program it starts. The wrapper built its connector before; the program and every process
under it only read the cache, so an access key there would only be a secret more places could leak."""

_USAGE_ERROR = 2


def startup_dir() -> str:
    """The folder holding the chaining ``sitecustomize.py`` that ``run`` puts first on ``PYTHONPATH``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_startup")


def child_environment(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with the start-up folder first on ``PYTHONPATH`` (once)."""
    env = dict(environ)
    folder = startup_dir()
    parts = [part for part in env.get("PYTHONPATH", "").split(os.pathsep) if part and part != folder]
    env["PYTHONPATH"] = os.pathsep.join([folder, *parts])
    return env


def program_environment(environ: dict[str, str]) -> dict[str, str]:
    """What ``run`` gives the program: :func:`child_environment` without the :data:`CREDENTIAL_VARIABLES`."""
    return {
        name: value for name, value in child_environment(environ).items() if name not in CREDENTIAL_VARIABLES
    }


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ossmodelconnector`` command."""
    parser = argparse.ArgumentParser(
        prog="ossmodelconnector", description="Load AI models straight from Alibaba Cloud OSS."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="prepare a model directory, then run a program that reads it through the shared cache",
        description="Prepare OSS_URI into MODEL_DIR (this process owns the download), run COMMAND so that "
        "every Python process it starts reads MODEL_DIR through the shared cache, pass signals on, "
        "return COMMAND's exit code and release the cache.",
    )
    run.add_argument("--endpoint", default="", help=f"OSS endpoint (default ${OSS_ENDPOINT_ENV})")
    run.add_argument(
        "--cred-path",
        default="",
        help=f"credentials JSON (default ${CRED_PATH_ENV}, else OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET)",
    )
    run.add_argument("--config", default="", help=f"config JSON (default ${CONFIG_PATH_ENV})")
    run.add_argument(
        "--wait", action="store_true", help="start COMMAND only once every byte is local and verified"
    )
    run.add_argument("oss_uri", metavar="OSS_URI", help="oss://bucket/prefix/")
    run.add_argument("model_dir", metavar="MODEL_DIR", help="the local directory to prepare")
    run.add_argument("program", metavar="COMMAND", nargs=argparse.REMAINDER, help="after --: what to run")
    gc = commands.add_parser(
        "gc",
        help="remove what processes that died (SIGKILL, the OOM killer) left in shared memory",
        description="Remove this user's state tables whose owner died, data segments that no live process "
        "holds, and prepare locks nobody holds, from /dev/shm and the cache directories; print each file "
        "and the bytes freed. Nothing a live process holds is removed.",
    )
    gc.add_argument(
        "--cache-dir",
        action="append",
        default=[],
        metavar="DIR",
        help=f"also look in DIR (repeatable); cacheDir of the config (${CONFIG_PATH_ENV}) always",
    )
    gc.add_argument("--config", default="", help=f"config JSON (default ${CONFIG_PATH_ENV})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code: COMMAND's for ``run`` (128 + N when signal N ended it), 2 for a usage error, 1
        when preparing failed; 0 for ``gc`` (1 when the config cannot be read).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "gc":
        return _gc(args.cache_dir, args.config)
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program:
        parser.error("give the program to run after --, e.g. -- python serve.py")
    try:
        connector = connector_from_environment(args.endpoint, args.cred_path, args.config)
    except ConnectorError as exc:
        print(f"ossmodelconnector: {exc}", file=sys.stderr)
        return _USAGE_ERROR
    with connector:
        try:
            connector.prepare_directory(args.oss_uri, args.model_dir, wait=args.wait)
        except ConnectorError as exc:
            print(f"ossmodelconnector: preparing {args.model_dir} failed: {exc}", file=sys.stderr)
            return 1
        return _run_program(program)


def _gc(cache_dirs: list[str], config_path: str) -> int:
    try:
        config = load_config(config_path or environment_value(CONFIG_PATH_ENV) or None)
    except ConnectorError as exc:
        print(f"ossmodelconnector: {exc}", file=sys.stderr)
        return 1
    removed = sweep([config.cache_dir, *cache_dirs])
    for item in removed:
        print(f"removed {item.path} ({item.kind}, {item.nbytes} bytes): {item.why}")
    total = sum(item.nbytes for item in removed)
    print(f"removed {len(removed)} file(s), {total} bytes" if removed else "nothing to remove")
    return 0


def _run_program(program: list[str]) -> int:
    try:
        child = subprocess.Popen(program, env=program_environment(dict(os.environ)))
    except OSError as exc:
        print(f"ossmodelconnector: cannot start {program[0]!r}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126

    # Ctrl-C / Ctrl-\ in a terminal already reach the program (same foreground process group): passing
    # them on too would deliver them twice (vLLM takes a second Ctrl-C as "exit at once").
    from_terminal = (signal.SIGINT, signal.SIGQUIT) if _foreground_in_a_terminal() else ()

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None and signum not in from_terminal:
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def _foreground_in_a_terminal() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal, stdin closed or replaced
        return False


if __name__ == "__main__":
    sys.exit(main())
