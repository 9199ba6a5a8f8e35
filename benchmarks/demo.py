"""The README's main job: a model in a local OSS, loaded through the connector and by download-then-load.

::

    generate a Qwen2-style model (random weights, real tokenizer) ─> upload to localoss (oss2 put)
        ├── connector:          prepare_directory ─> from_pretrained (while weights stream) ─> generate
        └── download-then-load: oss2 resumable_download (same threads) ─> from_pretrained ─> generate

Prints the time from nothing to a model that has generated tokens, and the throughput, for both.
Run: ``python benchmarks/demo.py [--size-mib 1024] [--bandwidth-mibps N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _model import generated_model
from _results import markdown_table
from localoss_harness import start_localoss

BUCKET = "models"
PREFIX = "demo-qwen2/"
PROMPT = "tok1 tok2 tok3"


def build_tokenizer(model_dir: Path, vocab_size: int) -> None:
    """A real fast tokenizer, built locally with the ``tokenizers`` library (nothing from a hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"tok{i}": i for i in range(vocab_size - 2)}
    vocab["<unk>"], vocab["<eos>"] = vocab_size - 2, vocab_size - 1
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>")
    tokenizer.save_pretrained(model_dir)


def upload(server_endpoint: str, access_key_id: str, secret: str, source: Path) -> int:
    """Upload every file of ``source`` with oss2 (the server computes ETag and CRC-64 at PUT)."""
    import oss2

    bucket = oss2.Bucket(oss2.Auth(access_key_id, secret), server_endpoint, BUCKET)
    bucket.create_bucket()
    total = 0
    for path in sorted(source.rglob("*")):
        if path.is_file():
            bucket.put_object_from_file(PREFIX + path.relative_to(source).as_posix(), str(path))
            total += path.stat().st_size
    return total


def load_and_generate(model_dir: Path, marks: dict[str, float] | None = None) -> list[int]:
    """Load the tokenizer and the model from ``model_dir``, generate a few tokens, return them.

    ``marks`` (if given) receives ``loaded_at`` (``from_pretrained`` returned) and ``generated_at``
    (``time.time()``), so that callers can tell loading from generating.
    """
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    # AutoTokenizer would pick Qwen2Tokenizer from config.json, which expects a BPE vocabulary; the
    # demo's tokenizer is a word-level one built locally, so it is loaded as what it is.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16)
    loaded_at = time.time()
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    if marks is not None:
        marks.update(loaded_at=loaded_at, generated_at=time.time())
    return [int(token) for token in output[0]]


def connector_load(
    endpoint: str, creds: tuple[str, str], target: Path, connections: int, *, wait: bool = False
) -> tuple[list[int], dict[str, Any]]:
    """``prepare_directory`` (streaming, or ``wait=True``) then load and generate.

    Returns the tokens and the connector's ``stats()`` taken before it closes, plus ``start_at``,
    ``loaded_at`` and ``generated_at`` (``time.time()`` just before ``prepare_directory``, when
    ``from_pretrained`` returned, after ``generate``), so that a caller can place
    ``ready_at``/``finished_at`` on the same clock. ``connections`` concurrent GETs, as many as the
    download-then-load contender's threads.
    """
    from ossmodelconnector import OssModelConnector
    from ossmodelconnector.oss.credentials import Credentials

    marks: dict[str, float] = {}
    with OssModelConnector(
        endpoint, cred_provider=Credentials(*creds), prefetch_vcpus=1, prefetch_workers=connections
    ) as connector:
        start_at = time.time()
        connector.prepare_directory(f"oss://{BUCKET}/{PREFIX}", str(target), progress=False, wait=wait)
        tokens = load_and_generate(target, marks)
        stats = connector.stats()
    return tokens, {**stats, "start_at": start_at, **marks}


def via_connector(endpoint: str, creds: tuple[str, str], target: Path, connections: int) -> list[int]:
    tokens, stats = connector_load(endpoint, creds, target, connections)
    print(
        f"  connector: {stats['requests']} requests, {stats['retries']} retries, "
        f"first byte after {stats.get('time_to_first_byte_s') or float('nan'):.3f}s"
    )
    return tokens


def download_prefix(endpoint: str, creds: tuple[str, str], target: Path, connections: int) -> int:
    """Download every object under ``oss://BUCKET/PREFIX`` to ``target`` as ``ossutil cp -r`` users do.

    Small files on ``connections`` threads at once, then each large file with oss2 ``resumable_download``
    split across the same number of threads. Returns the bytes downloaded.
    """
    import oss2

    bucket = oss2.Bucket(oss2.Auth(*creds), endpoint, BUCKET)
    target.mkdir(parents=True, exist_ok=True)
    objects = [obj for obj in oss2.ObjectIteratorV2(bucket, prefix=PREFIX) if not obj.key.endswith("/")]

    def fetch(obj: oss2.models.SimplifiedObjectInfo) -> None:
        path = target / obj.key[len(PREFIX) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        oss2.resumable_download(
            bucket,
            obj.key,
            str(path),
            num_threads=connections,
            part_size=8 << 20,
            multiget_threshold=16 << 20,
        )

    small = [obj for obj in objects if obj.size < 16 << 20]
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(fetch, small))
    for obj in objects:
        if obj.size >= 16 << 20:
            fetch(obj)
    return sum(obj.size for obj in objects)


def via_download(
    endpoint: str,
    creds: tuple[str, str],
    target: Path,
    connections: int,
    marks: dict[str, float] | None = None,
) -> list[int]:
    download_prefix(endpoint, creds, target, connections)
    return load_and_generate(target, marks)


def timed(run: Callable[[], list[int]]) -> tuple[float, list[int]]:
    start = time.perf_counter()
    tokens = run()
    return time.perf_counter() - start, tokens


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="model size in MiB (default 1024)")
    parser.add_argument("--shards", type=int, default=4, help="safetensors shards (default 4)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent GETs for both loaders")
    parser.add_argument("--bandwidth-mibps", type=int, default=0, help="cap the server's total bandwidth")
    args = parser.parse_args()

    print(f"Generating a ~{args.size_mib} MiB Qwen2-style model with random weights (cached)...")
    model = generated_model(args.size_mib, args.shards)
    if not (model / "tokenizer.json").exists():
        build_tokenizer(model, vocab_size=32000)

    # Import the frameworks before any clock starts, so that neither loader pays for it.
    from transformers.models.qwen2 import modeling_qwen2  # noqa: F401

    from ossmodelconnector import OssModelConnector  # noqa: F401

    workdir = Path(tempfile.mkdtemp(prefix="ossmc-demo-"))
    flags = ["--bandwidth-mibps", str(args.bandwidth_mibps)] if args.bandwidth_mibps else []
    server = start_localoss(workdir / "oss-root", *flags)
    try:
        creds = (server.access_key_id, server.access_key_secret)
        size = upload(server.endpoint, *creds, model)
        print(f"Uploaded {size / 2**20:.0f} MiB to oss://{BUCKET}/{PREFIX} on localoss at {server.endpoint}")
        results = {}
        for name, run in (("connector", via_connector), ("download-then-load", via_download)):
            target = workdir / name
            os.sync()
            elapsed, tokens = timed(
                lambda run=run, target=target: run(server.endpoint, creds, target, args.connections)
            )
            results[name] = (elapsed, tokens)
            shutil.rmtree(target, ignore_errors=True)
        same = results["connector"][1] == results["download-then-load"][1]
        base = results["download-then-load"][0]
        rows = [
            [name, f"{elapsed:.2f}", f"{size / elapsed / 1e9:.2f}", f"{base / elapsed:.2f}x"]
            for name, (elapsed, _) in results.items()
        ]
        print()
        print(
            markdown_table(["loader", "time to generated tokens (s)", "GB/s", "speed-up vs download"], rows)
        )
        print(f"\nGenerated tokens identical across loaders: {same} ({results['connector'][1][-8:]})")
        return 0 if same else 1
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
