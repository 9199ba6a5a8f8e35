"""Config: defaults, precedence (keyword > file > environment > default), validation messages, pickling."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector import config as config_module
from ossmodelconnector.config import MAX_TIMEOUT_S, MAX_WAIT_S, MIB, Config, load_config
from ossmodelconnector.errors import ConfigError
from ossmodelconnector.regular_files import MAX_SETTINGS_FILE_BYTES

SPECS = config_module._SPECS
SECONDS = [spec for spec in SPECS if spec.kind is float]


@pytest.fixture(autouse=True)
def _no_ossmc_environment() -> None:
    """The precedence tests set OSSMC_* themselves; start each test without any."""
    for name in [name for name in os.environ if name.startswith("OSSMC_")]:
        del os.environ[name]


def write_json(tmp_path: Path, doc: Any, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_defaults_and_derived_properties() -> None:
    c = load_config()
    assert c == Config()
    assert (c.log_level, c.log_path, c.audit_path) == (1, "", "")
    assert c.logging_level == logging.INFO
    assert (c.prefetch_vcpus, c.prefetch_workers, c.prefetch_connections) == (8, 2, 16)
    assert (c.fast_list_vcpus, c.fast_list_workers, c.fast_list_requests) == (4, 4, 16)
    assert c.chunk_size == 8 * MIB
    assert c.small_file_bytes == 16 * MIB
    assert c.memory_limit_mb == 0 and c.memory_limit_bytes is None
    assert c.gc_idle_seconds == 0.0
    assert c.cache_dir == "/dev/shm"
    assert (c.signature_version, c.region) == ("", "")
    assert (c.connect_timeout_s, c.read_timeout_s) == (10.0, 30.0)
    assert (c.max_attempts, c.retry_base_delay_s, c.retry_max_delay_s) == (8, 0.1, 5.0)
    assert c.wait_timeout_s == 600.0
    assert load_config(memory_limit_mb=100).memory_limit_bytes == 100 * MIB


def test_config_is_frozen_and_replace_validates() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.chunk_size_mb = 4  # type: ignore[misc]
    d = dataclasses.replace(c, chunk_size_mb=4)
    assert (c.chunk_size_mb, d.chunk_size_mb) == (8, 4)
    with pytest.raises(ConfigError, match="chunkSizeMB"):
        dataclasses.replace(c, chunk_size_mb=0)


def test_pickle_round_trip() -> None:
    c = load_config(prefetch_workers=3, region="cn-hangzhou", cache_dir="/tmp/x", wait_timeout_s=1.5)
    again = pickle.loads(pickle.dumps(c))
    assert again == c and type(again) is Config
    assert again.prefetch_connections == 24


def test_precedence_keyword_over_file_over_environment_over_default(tmp_path: Path) -> None:
    os.environ["OSSMC_PREFETCH_WORKERS"] = "3"
    os.environ["OSSMC_CHUNK_SIZE_MB"] = "4"
    os.environ["OSSMC_REGION"] = "cn-beijing"
    os.environ["OSSMC_CONNECT_TIMEOUT_S"] = "2.5"
    path = write_json(tmp_path, {"prefetch": {"workers": 5}, "chunkSizeMB": 16})
    c = load_config(path, prefetch_workers=7)
    assert c.prefetch_workers == 7  # keyword beats file and environment
    assert c.chunk_size_mb == 16  # file beats environment
    assert c.region == "cn-beijing"  # environment beats default
    assert c.connect_timeout_s == 2.5
    assert c.prefetch_vcpus == 8  # default
    assert load_config(path).prefetch_workers == 5
    assert load_config().prefetch_workers == 3
    del os.environ["OSSMC_PREFETCH_WORKERS"]
    assert load_config().prefetch_workers == 2


def test_every_field_reads_its_environment_variable() -> None:
    values = {
        "log_level": ("0", 0),
        "log_path": ("/tmp/l.log", "/tmp/l.log"),
        "audit_path": ("/tmp/a.log", "/tmp/a.log"),
        "prefetch_vcpus": ("4", 4),
        "prefetch_workers": ("5", 5),
        "fast_list_vcpus": ("2", 2),
        "fast_list_workers": ("3", 3),
        "chunk_size_mb": (" 32 ", 32),
        "small_file_mb": ("1", 1),
        "memory_limit_mb": ("512", 512),
        "gc_idle_seconds": ("60", 60.0),
        "cache_dir": ("/tmp/cache", "/tmp/cache"),
        "signature_version": ("V1", "v1"),
        "region": ("cn-shanghai", "cn-shanghai"),
        "connect_timeout_s": ("1.5", 1.5),
        "read_timeout_s": ("7", 7.0),
        "max_attempts": ("3", 3),
        "retry_base_delay_s": ("0.5", 0.5),
        "retry_max_delay_s": ("9", 9.0),
        "wait_timeout_s": ("30", 30.0),
        "owner_check_s": ("2", 2.0),
        "body_receiver": ("python", "python"),
        "fleet_enabled": (" Yes", True),
        "fleet_master_addr": ("10.0.0.1", "10.0.0.1"),
        "fleet_port": ("29501", 29501),
        "fleet_nodes": ("4", 4),
        "fleet_rank": ("3", 3),
        "fleet_timeout_s": ("12.5", 12.5),
    }
    assert set(values) == {spec.name for spec in SPECS}
    for name, (text, _) in values.items():
        os.environ["OSSMC_" + name.upper()] = text
    c = load_config()
    for name, (_, expected) in values.items():
        assert getattr(c, name) == expected, name


def test_empty_environment_variable_counts_as_unset() -> None:
    os.environ["OSSMC_PREFETCH_WORKERS"] = ""
    assert load_config().prefetch_workers == 2


def test_bad_environment_value_names_the_variable() -> None:
    os.environ["OSSMC_PREFETCH_WORKERS"] = "lots"
    with pytest.raises(ConfigError) as info:
        load_config()
    msg = str(info.value)
    assert "OSSMC_PREFETCH_WORKERS" in msg and "'lots'" in msg and "prefetch.workers" in msg
    assert "an integer from 1 to 1024" in msg
    assert load_config(prefetch_workers=3).prefetch_workers == 3  # an overridden variable is not read
    os.environ["OSSMC_PREFETCH_WORKERS"] = "0"
    with pytest.raises(
        ConfigError, match=r"0 \(environment variable OSSMC_PREFETCH_WORKERS\) is out of range"
    ):
        load_config()


def test_unknown_environment_variable_is_a_warning_with_a_suggestion(
    caplog: pytest.LogCaptureFixture,
) -> None:
    os.environ["OSSMC_PREFETCH_WORKER"] = "3"
    with caplog.at_level(logging.WARNING, logger="ossmodelconnector.config"):
        assert load_config() == Config()
    assert "OSSMC_PREFETCH_WORKER" in caplog.text and "did you mean OSSMC_PREFETCH_WORKERS" in caplog.text


def test_file_all_keys_nested(tmp_path: Path) -> None:
    doc = {
        "logLevel": 0,
        "logPath": "/tmp/o.log",
        "auditPath": "/tmp/o.audit",
        "prefetch": {"vcpus": 16, "workers": 4},
        "fastList": {"vcpus": 2, "workers": 8},
        "chunkSizeMB": 64,
        "smallFileMB": 0,
        "memoryLimitMB": 4096,
        "gc": {"idleSeconds": 120},
        "cacheDir": "/tmp/shm",
        "signatureVersion": "v4",
        "region": "cn-hangzhou",
        "timeouts": {"connectSeconds": 3, "readSeconds": 4.5},
        "retry": {"maxAttempts": 2, "baseDelaySeconds": 0, "maxDelaySeconds": 1},
        "waitTimeoutSeconds": 20,
        "ownerCheckSeconds": 3,
        "bodyReceiver": "python",
        "fleet": {
            "enabled": True,
            "masterAddr": "node-0.model.svc",
            "port": 29501,
            "nodes": 16,
            "rank": 15,
            "timeoutSeconds": 10,
        },
    }
    c = load_config(write_json(tmp_path, doc))
    assert c.prefetch_connections == 64 and c.fast_list_requests == 16
    assert c.chunk_size == 64 * MIB and c.small_file_bytes == 0 and c.memory_limit_bytes == 4096 * MIB
    assert (c.gc_idle_seconds, c.connect_timeout_s, c.read_timeout_s) == (120.0, 3.0, 4.5)
    assert isinstance(c.gc_idle_seconds, float)
    assert (c.max_attempts, c.retry_base_delay_s, c.retry_max_delay_s, c.wait_timeout_s) == (
        2,
        0.0,
        1.0,
        20.0,
    )
    assert c.as_json() == json.loads(json.dumps(doc, sort_keys=True)) | {
        "gc": {"idleSeconds": 120.0},
        "timeouts": {"connectSeconds": 3.0, "readSeconds": 4.5},
        "retry": {"maxAttempts": 2, "baseDelaySeconds": 0.0, "maxDelaySeconds": 1.0},
        "waitTimeoutSeconds": 20.0,
        "ownerCheckSeconds": 3.0,
        "fleet": doc["fleet"] | {"timeoutSeconds": 10.0},
    }


def test_path_may_be_pathlike_str_none_or_empty(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"chunkSizeMB": 2})
    assert load_config(path).chunk_size_mb == 2
    assert load_config(str(path)).chunk_size_mb == 2
    assert load_config("") == load_config(None) == Config()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"prefetch": {"worker": 3}},
            ["'prefetch.worker'", "did you mean 'prefetch.workers'?", "fastList.vcpus"],
        ),
        ({"chunkSizeMb": 3}, ["'chunkSizeMb'", "did you mean 'chunkSizeMB'?", "accepted keys:"]),
        ({"zzz": 1}, ["'zzz'", "accepted keys: logLevel, logPath"]),
        ({"gc": {"idleSeconds": 1, "extra": {"deep": 1}}}, ["'gc.extra'"]),
        ({"prefetch.workers": 3}, ["'prefetch.workers'", 'nested object: {"prefetch": {"workers": ...}}']),
    ],
)
def test_unknown_keys_are_named_dotted_with_suggestions(
    tmp_path: Path, doc: Any, expected: list[str]
) -> None:
    path = write_json(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for fragment in expected:
        assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_duplicate_keys_are_an_error_at_any_level(tmp_path: Path) -> None:
    path = write_json(tmp_path, '{"chunkSizeMB": 4, "chunkSizeMB": 8}')
    with pytest.raises(ConfigError, match=r"key 'chunkSizeMB' is given twice in config file"):
        load_config(path)
    path = write_json(tmp_path, '{"prefetch": {"workers": 4, "vcpus": 2, "workers": 4}}')
    with pytest.raises(ConfigError, match=r"key 'prefetch.workers' is given twice"):
        load_config(path)
    path = write_json(tmp_path, '{"prefetch": {"workers": 4}, "prefetch": {"vcpus": 4}}')
    with pytest.raises(ConfigError, match=r"key 'prefetch' is given twice"):
        load_config(path)


def test_malformed_json_names_path_line_and_column(tmp_path: Path) -> None:
    path = write_json(tmp_path, '{\n  "chunkSizeMB": 8,\n  "logLevel" 1\n}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "line 3 column 14" in msg and "not valid JSON" in msg


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "line 1 column 1"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"chunkSizeMB": NaN}', "NaN is not a JSON number"),
    ],
)
def test_other_bad_documents(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write_json(tmp_path, text))


def test_missing_and_unreadable_files_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"config file '.*nope\.json' does not exist"):
        load_config(missing)
    with pytest.raises(ConfigError, match=r"is a directory, not a regular file: it is not read"):
        load_config(tmp_path)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b'{"logLevel": "\xff"}')
    with pytest.raises(ConfigError, match=r"is not UTF-8"):
        load_config(binary)


# (JSON document, key named in the message, accepted values named in the message)
BAD_VALUES = [
    ({"prefetch": {"workers": 0}}, "prefetch.workers", "an integer from 1 to 1024"),
    ({"prefetch": {"vcpus": True}}, "prefetch.vcpus", "an integer from 1 to 1024"),
    ({"chunkSizeMB": 0}, "chunkSizeMB", "an integer from 1 to 1024"),
    ({"chunkSizeMB": 1025}, "chunkSizeMB", "an integer from 1 to 1024"),
    ({"chunkSizeMB": 8.0}, "chunkSizeMB", "an integer from 1 to 1024"),
    ({"chunkSizeMB": "8"}, "chunkSizeMB", "an integer from 1 to 1024"),
    ({"logLevel": 7}, "logLevel", "an integer from 0 to 3"),
    ({"logLevel": None}, "logLevel", "an integer from 0 to 3"),
    ({"logLevel": [1]}, "logLevel", "an integer from 0 to 3"),
    ({"logLevel": {"x": 1}}, "logLevel", "an integer from 0 to 3"),
    ({"signatureVersion": "v2"}, "signatureVersion", '"v1", "v4" or ""'),
    ({"signatureVersion": 4}, "signatureVersion", '"v1", "v4" or ""'),
    ({"bodyReceiver": "rust"}, "bodyReceiver", '"kernel" (the default) or "python"'),
    ({"cacheDir": "relative/dir"}, "cacheDir", "an absolute directory path"),
    ({"cacheDir": ""}, "cacheDir", "an absolute directory path"),
    ({"region": "CN_Hangzhou"}, "region", "a region id"),
    ({"logPath": 3}, "logPath", "a string"),
    ({"memoryLimitMB": -1}, "memoryLimitMB", "an integer from 0 to"),
    ({"smallFileMB": -1}, "smallFileMB", "an integer from 0 to"),
    ({"gc": {"idleSeconds": -1}}, "gc.idleSeconds", "a number of seconds >= 0"),
    ({"gc": {"idleSeconds": "soon"}}, "gc.idleSeconds", "a number of seconds >= 0"),
    ({"timeouts": {"connectSeconds": 0}}, "timeouts.connectSeconds", "a number of seconds > 0"),
    ({"timeouts": {"readSeconds": False}}, "timeouts.readSeconds", "a number of seconds > 0"),
    ({"retry": {"maxAttempts": 0}}, "retry.maxAttempts", "an integer from 1 to 100"),
    ({"waitTimeoutSeconds": 0}, "waitTimeoutSeconds", "a number of seconds > 0"),
    ({"retry": {"baseDelaySeconds": -0.5}}, "retry.baseDelaySeconds", "a number of seconds >= 0"),
]


@pytest.mark.parametrize(("doc", "key", "accepted"), BAD_VALUES)
def test_bad_values_name_key_value_and_accepted(tmp_path: Path, doc: Any, key: str, accepted: str) -> None:
    path = write_json(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"invalid {key} (" in msg
    assert accepted in msg
    leaf: Any = doc
    while isinstance(leaf, dict) and len(leaf) == 1 and isinstance(next(iter(leaf.values())), dict):
        leaf = next(iter(leaf.values()))
    value = next(iter(leaf.values()))
    assert repr(value) in msg, msg
    assert str(path) in msg


def test_a_section_given_a_scalar(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_json(tmp_path, {"prefetch": 16}))
    assert "'prefetch'" in str(info.value) and '"prefetch": {"vcpus": ..., "workers": ...}' in str(info.value)


def test_keyword_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(prefetch_worker=3)
    assert "'prefetch_worker'" in str(info.value) and "did you mean 'prefetch_workers'?" in str(info.value)
    with pytest.raises(ConfigError, match=r"1.5 \(keyword argument chunk_size_mb\) is not an integer"):
        load_config(chunk_size_mb=1.5)
    with pytest.raises(ConfigError, match=r"is not finite"):
        load_config(read_timeout_s=float("inf"))
    with pytest.raises(ConfigError, match=r"is a bool"):
        Config(max_attempts=True)


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(retry_base_delay_s=2, retry_max_delay_s=1)
    assert "retry.maxDelaySeconds" in str(info.value) and "retry.baseDelaySeconds" in str(info.value)
    with pytest.raises(ConfigError, match=r"prefetch.vcpus x prefetch.workers = 64 x 32 = 2048"):
        load_config(prefetch_vcpus=64, prefetch_workers=32)
    with pytest.raises(ConfigError, match=r"fastList.vcpus x fastList.workers"):
        load_config(fast_list_vcpus=1024, fast_list_workers=2)


def test_signature_version_resolution() -> None:
    assert Config().resolve_signature_version(None) == "v1"
    assert Config().resolve_signature_version("cn-hangzhou") == "v4"
    assert Config(signature_version="v1").resolve_signature_version("cn-hangzhou") == "v1"
    assert Config(signature_version="V4").resolve_signature_version("cn-hangzhou") == "v4"
    with pytest.raises(ConfigError, match=r'signatureVersion = "v4" needs a region'):
        Config(signature_version="v4").resolve_signature_version("")


def test_log_levels_map_to_logging() -> None:
    assert [Config(log_level=n).logging_level for n in range(4)] == [
        logging.DEBUG,
        logging.INFO,
        logging.WARNING,
        logging.ERROR,
    ]


def test_class_docstring_documents_every_field() -> None:
    doc = Config.__doc__ or ""
    for spec in SPECS:
        assert f"``{spec.name}``" in doc, spec.name
        assert f"``{spec.env}``" in doc, spec.env
        assert f"``{spec.json}``" in doc, spec.json
        default = (
            spec.default
            if not isinstance(spec.default, float) or not spec.default.is_integer()
            else int(spec.default)
        )
        row = next(line for line in doc.splitlines() if f"``{spec.name}``" in line)
        assert ('""' if default == "" else str(default)) in row, (spec.name, row)


def test_env_names_follow_the_field_names() -> None:
    assert all(spec.env == "OSSMC_" + spec.name.upper() for spec in SPECS)


configs = st.builds(
    Config,
    log_level=st.integers(0, 3),
    log_path=st.text(st.characters(blacklist_characters="\0", codec="utf-8"), max_size=20),
    prefetch_vcpus=st.integers(1, 32),
    prefetch_workers=st.integers(1, 32),
    chunk_size_mb=st.integers(1, 1024),
    memory_limit_mb=st.integers(0, 2**20),
    gc_idle_seconds=st.floats(0, MAX_WAIT_S),
    cache_dir=st.sampled_from(["/dev/shm", "/tmp/x y", "/ü"]),
    signature_version=st.sampled_from(["", "v1", "v4"]),
    region=st.sampled_from(["", "cn-hangzhou", "us-east-1"]),
    connect_timeout_s=st.floats(0.001, MAX_TIMEOUT_S),
    max_attempts=st.integers(1, 100),
)


@settings(max_examples=60, deadline=None)
@given(config=configs)
def test_as_json_round_trips_through_a_file(tmp_path_factory: pytest.TempPathFactory, config: Config) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_text(json.dumps(config.as_json()), encoding="utf-8")
    assert load_config(path) == config
    assert pickle.loads(pickle.dumps(config)) == config


# --- seconds: bounded above, so no accepted value overflows a wait, a socket timeout or a clock sum -------


def test_every_seconds_field_has_an_upper_bound_a_wait_accepts() -> None:
    assert {spec.name for spec in SECONDS} == {
        "gc_idle_seconds",
        "connect_timeout_s",
        "read_timeout_s",
        "retry_base_delay_s",
        "retry_max_delay_s",
        "wait_timeout_s",
        "owner_check_s",
        "fleet_timeout_s",
    }
    for spec in SECONDS:
        assert spec.key.hi in (MAX_TIMEOUT_S, MAX_WAIT_S), spec.name
        assert spec.key.hi <= threading.TIMEOUT_MAX, spec.name


def _assert_names_key_value_and_range(message: str, spec: Any, shown: str, source: str) -> None:
    assert f"invalid {spec.json} ({spec.name}, env {spec.env}," in message, message
    assert shown in message and source in message, message
    bound = "<= 3600 (1 hour)" if spec.key.hi == MAX_TIMEOUT_S else "<= 2592000 (30 days)"
    assert f"accepted: a number of seconds {'>' if spec.key.lo_exclusive else '>='} 0 and {bound}" in message


@pytest.mark.parametrize("spec", SECONDS, ids=lambda spec: spec.json)
@pytest.mark.parametrize(
    "value",
    [1e300, math.inf, -math.inf, math.nan, 10**400, 10**5000],
    ids=["1e300", "inf", "-inf", "nan", "10**400", "10**5000"],
)
def test_a_huge_or_non_finite_keyword_is_a_config_error(spec: Any, value: float) -> None:
    shown = "an integer of 16610 bits" if value == 10**5000 else repr(value)
    for build in (load_config, Config):
        with pytest.raises(ConfigError) as info:
            build(**{spec.name: value})
        _assert_names_key_value_and_range(str(info.value), spec, shown, spec.name)
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(Config(), **{spec.name: value})
    _assert_names_key_value_and_range(str(info.value), spec, shown, spec.name)


@pytest.mark.parametrize("spec", SECONDS, ids=lambda spec: spec.json)
@pytest.mark.parametrize(
    ("literal", "shown"), [("1e300", "1e+300"), ("1e400", "inf"), ("1" + "0" * 400, "1" + "0" * 400)]
)
def test_a_huge_number_in_a_config_file_is_a_config_error(
    tmp_path: Path, spec: Any, literal: str, shown: str
) -> None:
    *parents, leaf = spec.json.split(".")
    text = "".join(f'{{"{parent}": ' for parent in parents) + f'{{"{leaf}": {literal}}}' + "}" * len(parents)
    path = write_json(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    _assert_names_key_value_and_range(str(info.value), spec, shown, f"config file {str(path)!r}")


@pytest.mark.parametrize("spec", SECONDS, ids=lambda spec: spec.json)
@pytest.mark.parametrize("text", ["1e300", "inf", "-Infinity", "nan", "1e400"])
def test_a_huge_or_non_finite_environment_value_is_a_config_error(spec: Any, text: str) -> None:
    os.environ[spec.env] = text
    with pytest.raises(ConfigError) as info:
        load_config()
    shown = repr(float(text))
    _assert_names_key_value_and_range(str(info.value), spec, shown, f"environment variable {spec.env}")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_accepted_seconds_value_works_where_it_is_used_and_any_other_is_refused(
    data: st.DataObject,
) -> None:
    spec = data.draw(st.sampled_from(SECONDS))
    value = data.draw(st.floats() | st.integers(min_value=-(10**400), max_value=10**400))
    low, high = spec.key.lo, spec.key.hi
    fits = not isinstance(value, float) or math.isfinite(value)
    fits = fits and (value > low if spec.key.lo_exclusive else value >= low) and value <= high
    overrides = {spec.name: value}
    # Only the bound under test may refuse, not "the longest back-off must be at least the first one".
    if spec.name == "retry_base_delay_s":
        overrides["retry_max_delay_s"] = MAX_TIMEOUT_S
    if spec.name == "retry_max_delay_s":
        overrides["retry_base_delay_s"] = 0.0
    if not fits:
        with pytest.raises(ConfigError, match=spec.json):
            load_config(**overrides)
        return
    seconds = getattr(load_config(**overrides), spec.name)
    # Where the settings go: threading waits, socket timeouts, deadline arithmetic. None overflows.
    assert threading.Lock().acquire(timeout=seconds)
    with socket.socket() as sock:
        sock.settimeout(seconds)
    assert math.isfinite(time.monotonic() + seconds)


# --- the config file itself: a regular file of at most 1 MiB -------------------------------------------


@pytest.mark.timeout(60)  # only a hang guard: a FIFO must be refused at once, not waited on
def test_a_fifo_as_config_path_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        load_config(fifo)
    message = str(info.value)
    assert f"config file {str(fifo)!r} is a FIFO (named pipe), not a regular file" in message
    assert "config_path must name a regular JSON file of at most 1 MiB" in message


def test_a_device_as_config_path_is_refused_unread() -> None:
    with pytest.raises(ConfigError, match=r"config file '/dev/zero' is a character device, not a regular"):
        load_config("/dev/zero")


def test_a_config_file_over_the_bound_is_refused_unread(tmp_path: Path) -> None:
    big = write_json(tmp_path, '{"chunkSizeMB": 4' + " " * (2 * MIB) + "}")
    with pytest.raises(ConfigError) as info:
        load_config(big)
    assert f"holds more than 1 MiB ({big.stat().st_size} bytes)" in str(info.value)
    padding = " " * (MAX_SETTINGS_FILE_BYTES - 18)
    at_bound = write_json(tmp_path, '{"chunkSizeMB": 4' + padding + "}", "b.json")
    assert at_bound.stat().st_size == MAX_SETTINGS_FILE_BYTES
    assert load_config(at_bound).chunk_size_mb == 4


def test_a_config_file_behind_a_symlink_still_loads(tmp_path: Path) -> None:
    """Kubernetes mounts a config map as a chain of symlinks: they are followed, the target is checked."""
    target = write_json(tmp_path, {"chunkSizeMB": 4}, "..data.json")
    link = tmp_path / "config.json"
    link.symlink_to(target)
    assert load_config(link).chunk_size_mb == 4
