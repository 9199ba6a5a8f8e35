"""What the start-up hook (``ossmodelconnector.pth``) costs every Python process, with and without work to do.

A throwaway venv under /tmp (never the project's) gets a path file that reaches this interpreter's
packages and the repository, and, for the states that need it, the package's ``ossmodelconnector.pth``.
``python -c pass`` is started ``--number`` times per state, the states interleaved so that the machine's
noise hits them alike; each state's median wall time is compared with the venv without the .pth:

- no .pth (baseline);
- .pth installed, no variable set (what every Python process on a machine with the package pays);
- .pth installed, ``OSSMC_PREPARED_DIRS`` naming an empty directory (a reader: hooks installed,
  the directory looked at, nothing to attach);
- .pth installed, ``OSSMC_PREPARED_DIRS`` naming a directory this script prepared (a reader of a live
  one: its manifest read and its state table mapped at start-up, so that any spelling of its files is
  recognized from the first open).

    python benchmarks/startup_cost.py [--number 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from localoss_harness import start_localoss

from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

REPO = Path(__file__).resolve().parent.parent
PTH = REPO / "ossmodelconnector.pth"


def make_venv(root: Path) -> tuple[Path, Path]:
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)  # type: ignore[attr-defined]
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site = Path(purelib)
    # Sorted before ossmodelconnector.pth: the package and its dependencies are importable when it runs.
    (site / "aa_paths.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{REPO}\n")
    return python, site


def time_start(python: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=40, help="starts per state")
    args = parser.parse_args()
    base_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OSSMC_", "OSSMODELCONNECTOR_", "ENABLE_"))
    }
    base_env.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory(prefix="startup-venv-", dir="/tmp") as scratch:
        python, site = make_venv(Path(scratch) / "venv")
        installed = site / PTH.name
        model_dir = Path(scratch) / "model"
        model_dir.mkdir()
        server = start_localoss(Path(scratch) / "oss", stderr=subprocess.DEVNULL)
        for index in range(4):  # four shards of a prepared model, 4 MiB each
            server.put_file("startup", f"m/model-{index:05d}.safetensors", os.urandom(4 << 20))
        server.put_file("startup", "m/config.json", b"{}")
        credentials = Credentials(server.access_key_id, server.access_key_secret)
        connector = OssModelConnector(server.endpoint, cred_provider=credentials, small_file_mb=1)
        prepared = Path(scratch) / "prepared"
        connector.prepare_directory("oss://startup/m/", prepared, wait=True)
        states = {
            "no .pth (baseline)": (False, base_env),
            ".pth, variables unset": (True, base_env),
            ".pth, OSSMC_PREPARED_DIRS set (reader)": (
                True,
                {**base_env, "OSSMC_PREPARED_DIRS": str(model_dir)},
            ),
            ".pth, OSSMC_PREPARED_DIRS naming a live prepared directory (attached at start)": (
                True,
                {**base_env, "OSSMC_PREPARED_DIRS": str(prepared)},
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in states}
        for with_pth, env in states.values():  # warm-up: page cache, .pyc files
            if with_pth:
                shutil.copy(PTH, installed)
            time_start(python, env)
            installed.unlink(missing_ok=True)
        for _ in range(args.number):
            for name, (with_pth, env) in states.items():
                if with_pth:
                    shutil.copy(PTH, installed)
                else:
                    installed.unlink(missing_ok=True)
                times[name].append(time_start(python, env))
        installed.unlink(missing_ok=True)
        connector.close()
        server.stop()
    baseline = median(times["no .pth (baseline)"])
    rows = [
        [
            name,
            f"{median(values) * 1000:.1f}",
            f"{(median(values) - baseline) * 1000:+.1f}",
            f"{median(values) / baseline:.2f}",
        ]
        for name, values in times.items()
    ]
    table = markdown_table(["state", "python -c pass, median ms", "vs baseline ms", "ratio"], rows)
    print(table)
    write_section(
        "startup_cost",
        f"{args.number} starts per state, interleaved, in a throwaway venv. The reader states import the "
        "hooks and the cache modules (no oss2, no HTTP client: the connector is imported lazily); the last "
        "also reads the manifest of a live directory of 4 large files and maps its state table.\n\n" + table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
