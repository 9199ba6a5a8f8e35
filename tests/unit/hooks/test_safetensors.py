"""The safetensors hooks: opening waits for the header only, each tensor read waits for its own bytes."""

from __future__ import annotations

import concurrent.futures
import json
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from hooks_harness import SlowFile, registered_files

from ossmodelconnector import hooks
from ossmodelconnector.errors import RequestTimeoutError
from ossmodelconnector.hooks.safetensors import SafeOpenProxy

CHUNK = 4096
# Held in a dict on purpose: the hooks replace every module global bound to the real class, aliases too.
REAL = {"safe_open": safetensors.safe_open, "handle": safetensors._safe_open_handle}


@pytest.fixture
def hooked() -> Iterator[None]:
    hooks.install()
    try:
        yield
    finally:
        hooks.uninstall()
        assert safetensors.safe_open is REAL["safe_open"]
        assert safetensors.torch.safe_open is REAL["safe_open"]
        assert safetensors._safe_open_handle is REAL["handle"]


def _tensors(seed: int, count: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [
        (random.Random(seed + i).randint(1, 40), random.Random(seed - i).randint(1, 300))
        for i in range(count)
    ]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.int64]
    out = {}
    for i, shape in enumerate(shapes):
        dtype = dtypes[i % len(dtypes)]
        if dtype.is_floating_point:
            out[f"layer.{i}.weight"] = torch.randn(shape, generator=generator).to(dtype)
        else:
            out[f"layer.{i}.index"] = torch.randint(-(2**40), 2**40, shape, generator=generator)
    return out


def _file(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "src.safetensors") -> bytes:
    path = tmp_path / name
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def _header_end(data: bytes) -> int:
    return 8 + struct.unpack("<Q", data[:8])[0]


def _tensor_range(data: bytes, name: str) -> tuple[int, int]:
    header_end = _header_end(data)
    start, end = json.loads(data[8:header_end])[name]["data_offsets"]
    return header_end + start, header_end + end


def _assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.contiguous().view(torch.uint8).tolist() == expected.contiguous().view(torch.uint8).tolist()


def test_open_keys_and_slices_wait_only_for_headers(tmp_path: Path, hooked: None) -> None:
    shards = {f"model-{i:05d}.safetensors": _tensors(seed=i) for i in range(3)}
    files = {name: _file(tmp_path, tensors, name) for name, tensors in shards.items()}
    with registered_files(tmp_path / "model", files, CHUNK, demand_only=True) as slow:
        slices = {}
        handles = []
        for name in files:
            handle = safetensors.safe_open(tmp_path / "model" / name, framework="pt", device="cpu")
            assert isinstance(handle, SafeOpenProxy)
            handles.append(handle)
            assert handle.metadata() == {"format": "pt"}
            assert sorted(handle.offset_keys()) == handle.keys() == sorted(shards[name])
            for key in handle.keys():  # noqa: SIM118 - keys() is the method under test
                slices[name, key] = handle.get_slice(key)
                assert slices[name, key].get_shape() == list(shards[name][key].shape)
                assert slices[name, key].get_dtype()
        for name, data in files.items():
            header_end = _header_end(data)
            assert all(end <= header_end for _, end in slow[name].waits), slow[name].waits
            assert slow[name].written_chunks() <= slow[name].chunks_of(0, header_end)
            assert slow[name].wait_alls == 0
        # Materializing in parameter order from 4 threads (as transformers does) gives the source bytes.
        order = sorted(slices, key=lambda item: item[1])
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda item: slices[item][...], order))
        for (name, key), tensor in zip(order, results, strict=True):
            _assert_same(tensor, shards[name][key])
        for handle in handles:
            handle.__exit__(None, None, None)


def test_get_tensor_waits_for_exactly_its_range(tmp_path: Path, hooked: None) -> None:
    tensors = _tensors(seed=7)
    data = _file(tmp_path, tensors)
    with registered_files(tmp_path / "m", {"w.safetensors": data}, CHUNK, demand_only=True) as slow:
        waitable: SlowFile = slow["w.safetensors"]
        with safetensors.safe_open(str(tmp_path / "m" / "w.safetensors"), framework="pt") as f:
            header_waits = len(waitable.waits)
            for key in reversed(f.offset_keys()):
                _assert_same(f.get_tensor(key), tensors[key])
                assert waitable.waits[-1] == _tensor_range(data, key)
        assert len(waitable.waits) == header_waits + len(tensors)


def test_safe_open_handle_on_a_file_object(tmp_path: Path, hooked: None) -> None:
    tensors = _tensors(seed=8)
    data = _file(tmp_path, tensors)
    with registered_files(tmp_path / "m", {"w.safetensors": data}, CHUNK, demand_only=True) as slow:
        with open(tmp_path / "m" / "w.safetensors", "rb") as f:
            handle = safetensors._safe_open_handle(f, framework="pt")
            assert isinstance(handle, SafeOpenProxy)
            for key in handle.offset_keys():
                _assert_same(handle.get_tensor(key), tensors[key])
        assert slow["w.safetensors"].wait_alls == 0


def test_slice_indexing_gives_the_source_values(tmp_path: Path, hooked: None) -> None:
    tensors = _tensors(seed=3)
    data = _file(tmp_path, tensors)
    with (
        registered_files(tmp_path / "m", {"w.safetensors": data}, CHUNK, demand_only=True),
        safetensors.safe_open(tmp_path / "m" / "w.safetensors", framework="pt") as f,
    ):
        for key, expected in tensors.items():
            part = f.get_slice(key)[1:, ::2]
            _assert_same(part.contiguous(), expected[1:, ::2].contiguous())


def test_load_file_and_get_tensors(tmp_path: Path, hooked: None) -> None:
    tensors = _tensors(seed=11)
    data = _file(tmp_path, tensors)
    numpy_tensors = {key: value for key, value in tensors.items() if value.dtype != torch.bfloat16}
    files = {"a.safetensors": data, "b.safetensors": _file(tmp_path, numpy_tensors, "np.safetensors")}
    with registered_files(tmp_path / "m", files, CHUNK, order=[]) as slow:
        loaded = safetensors.torch.load_file(tmp_path / "m" / "a.safetensors")
        assert loaded.keys() == tensors.keys()
        for key in tensors:
            _assert_same(loaded[key], tensors[key])
        assert slow["a.safetensors"].wait_alls == 0  # per-range waits through the proxy, not the whole file
        with safetensors.safe_open(tmp_path / "m" / "b.safetensors", framework="np") as f:
            arrays = f.get_tensors()
        assert arrays.keys() == numpy_tensors.keys()
        for key in numpy_tensors:
            assert arrays[key].tobytes() == tensors[key].contiguous().view(torch.uint8).numpy().tobytes()


def test_load_bytes_read_through_open(tmp_path: Path, hooked: None) -> None:
    tensors = _tensors(seed=5)
    data = _file(tmp_path, tensors)
    with registered_files(tmp_path / "m", {"w.safetensors": data}, CHUNK, demand_only=True):
        with open(tmp_path / "m" / "w.safetensors", "rb") as f:
            loaded = safetensors.torch.load(f.read())
        for key in tensors:
            _assert_same(loaded[key], tensors[key])


def test_errors_from_the_waitable_propagate(tmp_path: Path, hooked: None) -> None:
    tensors = _tensors(seed=2)
    data = _file(tmp_path, tensors)
    last = max(tensors, key=lambda key: _tensor_range(data, key)[1])
    failing_chunk = (_tensor_range(data, last)[1] - 1) // CHUNK
    failure = RequestTimeoutError("w.safetensors: chunk never arrived; check the network", key="w")
    with (
        registered_files(tmp_path / "m", {"w.safetensors": data}, CHUNK, failures={failing_chunk: failure}),
        safetensors.safe_open(tmp_path / "m" / "w.safetensors", framework="pt") as f,
    ):
        with pytest.raises(RequestTimeoutError) as caught:
            f.get_tensor(last)
        assert caught.value is failure
        with pytest.raises(RequestTimeoutError):
            f.get_slice(last)[...]


def test_unknown_tensor_and_bad_header_raise_safetensors_errors(tmp_path: Path, hooked: None) -> None:
    data = _file(tmp_path, _tensors(seed=1))
    bogus = struct.pack("<Q", 10**12) + b"{}" * 100
    with registered_files(tmp_path / "m", {"w.safetensors": data, "bad.safetensors": bogus}, CHUNK):
        with (
            safetensors.safe_open(tmp_path / "m" / "w.safetensors", framework="pt") as f,
            pytest.raises(safetensors.SafetensorError),
        ):
            f.get_tensor("no.such.tensor")
        with pytest.raises(safetensors.SafetensorError):
            safetensors.safe_open(tmp_path / "m" / "bad.safetensors", framework="pt")


def test_unregistered_files_get_the_real_class(tmp_path: Path, hooked: None) -> None:
    _file(tmp_path, _tensors(seed=4), "plain.safetensors")
    with safetensors.safe_open(tmp_path / "plain.safetensors", framework="pt") as f:
        assert type(f) is REAL["safe_open"]
        assert f.keys()
