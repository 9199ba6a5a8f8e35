"""vLLM's own loader (``safetensors_weights_iterator``) in worker processes reading a prepared directory.

vLLM's wheel pins a CUDA torch and dozens of serving dependencies, so it is not part of the test venv.
This test runs when ``OSSMC_VLLM_PYTHON`` names an interpreter that can import
``vllm.model_executor.model_loader.weight_utils`` (and ``safetensors``/``torch``), e.g. a venv made with
``pip install --no-deps vllm`` plus what that import needs (listed in the README); it is skipped otherwise:

    OSSMC_VLLM_PYTHON=/tmp/vllm-venv/bin/python pytest tests/e2e/test_multiprocess_vllm.py
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from localoss_harness import LocalOss
from multiprocess_workers import write_sharded_model

from ossmodelconnector import OssModelConnector
from ossmodelconnector.cli import child_environment
from ossmodelconnector.oss.credentials import Credentials

VLLM_PYTHON = os.environ.get("OSSMC_VLLM_PYTHON", "")
TESTS = str(Path(__file__).parent.parent)
REPO = str(Path(__file__).parent.parent.parent)

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON,
    reason="vLLM cannot be installed in the test venv (its wheel pins a CUDA torch); set OSSMC_VLLM_PYTHON "
    "to an interpreter that imports vllm's weight_utils to run it",
)

WORKER = textwrap.dedent(
    """
    import glob, hashlib, json, os, sys
    import torch
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator
    model_dir = sys.argv[1]
    files = glob.glob(os.path.join(model_dir, "*.safetensors"))
    digests = {
        name: hashlib.sha256(tensor.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
        for name, tensor in safetensors_weights_iterator(files, False)
    }
    print(json.dumps({"hooked": "ossmodelconnector.hooks" in sys.modules, "digests": digests}))
    """
)


def test_vllm_weights_iterator_in_two_workers(localoss_factory: object, tmp_path: Path) -> None:
    source = tmp_path / "source"
    digests = write_sharded_model(str(source), 32, 4)
    server: LocalOss = localoss_factory("--bandwidth-mibps", "32")  # type: ignore[operator]
    server.make_bucket("vllm-bucket")
    for path in sorted(source.iterdir()):
        server.put_file("vllm-bucket", f"m/{path.name}", path.read_bytes())
    model_dir = tmp_path / "model"
    with OssModelConnector(
        server.endpoint,
        cred_provider=Credentials(server.access_key_id, server.access_key_secret),
        small_file_mb=1,
    ) as connector:
        connector.prepare_directory("oss://vllm-bucket/m/", model_dir)
        env = child_environment(dict(os.environ))
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], REPO, TESTS])
        workers = [
            subprocess.Popen(
                [VLLM_PYTHON, "-c", WORKER, str(model_dir)], env=env, stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    for output in outputs:
        report = json.loads(output.strip().splitlines()[-1])
        assert report["hooked"]
        assert report["digests"] == digests
