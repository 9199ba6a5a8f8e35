"""The connector's settings: one frozen, validated :class:`Config`, built by :func:`load_config`.

::

    defaults ─┐
    OSSMC_* environment ─┤ (each layer overrides the one above it)
    JSON config file ────┤──> validated per key, naming its source ──> Config(...) ──> components
    keyword overrides ───┘

Precedence is fixed: explicit keyword override > JSON config file > environment > default. The JSON file
uses the reference product's camelCase keys, a dotted name being a nested object
(``{"prefetch": {"workers": 16}}``). Nothing else in the package reads ``os.environ`` for settings:
components receive a ``Config`` and derive new ones with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ossmodelconnector.environment import ENV_PREFIX, NOT_SETTINGS
from ossmodelconnector.errors import ConfigError
from ossmodelconnector.regular_files import MAX_SETTINGS_FILE_BYTES, read_regular_file

__all__ = ["MAX_CONNECTIONS", "MAX_TIMEOUT_S", "MAX_WAIT_S", "MIB", "Config", "load_config"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024

DEFAULT_LOG_LEVEL = 1
DEFAULT_LOG_PATH = ""
DEFAULT_AUDIT_PATH = ""
DEFAULT_PREFETCH_VCPUS = 8
DEFAULT_PREFETCH_WORKERS = 2
DEFAULT_FAST_LIST_VCPUS = 4
DEFAULT_FAST_LIST_WORKERS = 4
DEFAULT_CHUNK_SIZE_MB = 8
DEFAULT_SMALL_FILE_MB = 16
DEFAULT_MEMORY_LIMIT_MB = 0
DEFAULT_GC_IDLE_SECONDS = 0.0
DEFAULT_CACHE_DIR = "/dev/shm"
DEFAULT_SIGNATURE_VERSION = ""
DEFAULT_REGION = ""
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_RETRY_BASE_DELAY_S = 0.1
DEFAULT_RETRY_MAX_DELAY_S = 5.0
DEFAULT_WAIT_TIMEOUT_S = 600.0
DEFAULT_OWNER_CHECK_S = 1.0
DEFAULT_BODY_RECEIVER = "kernel"
DEFAULT_FLEET_ENABLED = False
DEFAULT_FLEET_MASTER_ADDR = ""
DEFAULT_FLEET_PORT = 0
DEFAULT_FLEET_NODES = 0
DEFAULT_FLEET_RANK = -1
DEFAULT_FLEET_TIMEOUT_S = 30.0
MAX_FLEET_NODES = 65536
_TRUE_TEXTS = ("1", "true", "yes", "on")
_FALSE_TEXTS = ("0", "false", "no", "off")

# vcpus x workers threads each hold a connection; past this a machine spends its time switching threads.
MAX_CONNECTIONS = 1024

MAX_TIMEOUT_S = 3600.0
"""Upper bound of ``timeouts.*``, ``retry.*DelaySeconds`` and ``ownerCheckSeconds``: one hour.

Each is how long one request, one back-off or one liveness check may take; an hour is already far past
any useful value, and a value in milliseconds given by mistake (``"connectSeconds": 10000``) is refused
instead of meaning hours. Every bound also keeps the value inside what ``threading`` waits, socket
timeouts and ``time`` arithmetic accept (``1e300`` would raise ``OverflowError`` there).
"""
MAX_WAIT_S = 30 * 24 * 3600.0
"""Upper bound of ``waitTimeoutSeconds`` and ``gc.idleSeconds``: 30 days (2592000 s), "practically never"."""

_LOGGING_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
_SIGNATURE_VERSIONS = ("", "v1", "v4")
_BODY_RECEIVERS = ("kernel", "python")
_REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")


@dataclass(frozen=True)
class _Key:
    """How one field is spelled outside Python and which values it accepts."""

    json: str
    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_exclusive: bool = False
    check: Callable[[Any], str | None] | None = None  # returns why the value is wrong, or None
    accepted: str = ""  # the accepted values in words, when ``check`` decides


def _key(json_key: str, kind: type, **kwargs: Any) -> dict[str, _Key]:
    return {"key": _Key(json_key, kind, **kwargs)}


def _check_path(value: str) -> str | None:
    return "it contains a NUL character" if "\0" in value else None


def _check_cache_dir(value: str) -> str | None:
    if "\0" in value:
        return "it contains a NUL character"
    if not os.path.isabs(value):
        return "it is not an absolute path"
    return None


def _check_signature_version(value: str) -> str | None:
    return None if value in _SIGNATURE_VERSIONS else "it is not a known signature version"


def _check_body_receiver(value: str) -> str | None:
    return None if value in _BODY_RECEIVERS else "it is not a known body receiver"


def _check_host(value: str) -> str | None:
    if value and (value != value.strip() or any(c in value for c in "\0/ ")):
        return "it is not a host name or address"
    return None


def _check_region(value: str) -> str | None:
    if value == "" or _REGION_RE.match(value):
        return None
    return "it is not a region id"


@dataclass(frozen=True)
class Config:
    """Every setting of the connector; immutable, validated when built.

    Build it with :func:`load_config` (file, environment, overrides) or directly (defaults + keywords);
    derive a variant with :func:`dataclasses.replace`, which validates again.

    ============================ =========================== =========== ====================================
    field / environment variable JSON key                    default     unit, limits, meaning
    ============================ =========================== =========== ====================================
    ``log_level``                ``logLevel``                1           0 DEBUG, 1 INFO, 2 WARNING, 3 ERROR:
    ``OSSMC_LOG_LEVEL``                                                  level of the ``logPath`` file
    ``log_path``                 ``logPath``                 ""          log file path; "" = no log file
    ``OSSMC_LOG_PATH``
    ``audit_path``               ``auditPath``               ""          one line per OSS request; "" = off
    ``OSSMC_AUDIT_PATH``
    ``prefetch_vcpus``           ``prefetch.vcpus``          8           integer 1..1024; vcpus x workers =
    ``OSSMC_PREFETCH_VCPUS``                                             concurrent connections (<= 1024)
    ``prefetch_workers``         ``prefetch.workers``        2           integer 1..1024, connections per
    ``OSSMC_PREFETCH_WORKERS``                                           vcpu
    ``fast_list_vcpus``          ``fastList.vcpus``          4           integer 1..1024; vcpus x workers =
    ``OSSMC_FAST_LIST_VCPUS``                                            concurrent list requests (<= 1024)
    ``fast_list_workers``        ``fastList.workers``        4           integer 1..1024
    ``OSSMC_FAST_LIST_WORKERS``
    ``chunk_size_mb``            ``chunkSizeMB``             8           MiB, integer 1..1024: one ranged GET
    ``OSSMC_CHUNK_SIZE_MB``
    ``small_file_mb``            ``smallFileMB``             16          MiB, integer >= 0: smaller files go
    ``OSSMC_SMALL_FILE_MB``                                              to disk, the others to the cache
    ``memory_limit_mb``          ``memoryLimitMB``           0           MiB, integer >= 0: cache budget;
    ``OSSMC_MEMORY_LIMIT_MB``                                            0 = free space of ``cacheDir``
    ``gc_idle_seconds``          ``gc.idleSeconds``          0           seconds 0..2592000 (30 days) before
    ``OSSMC_GC_IDLE_SECONDS``                                            an idle cached file is dropped;
                                                                         0 = never
    ``cache_dir``                ``cacheDir``                /dev/shm    absolute path of the shared-memory
    ``OSSMC_CACHE_DIR``                                                  cache
    ``signature_version``        ``signatureVersion``        ""          "v1", "v4", or "" = v4 when a region
    ``OSSMC_SIGNATURE_VERSION``                                          is known, else v1
    ``region``                   ``region``                  ""          region id (``cn-hangzhou``); "" =
    ``OSSMC_REGION``                                                     derived from the endpoint
    ``connect_timeout_s``        ``timeouts.connectSeconds`` 10          seconds > 0, <= 3600: to open a
    ``OSSMC_CONNECT_TIMEOUT_S``                                          connection
    ``read_timeout_s``           ``timeouts.readSeconds``    30          seconds > 0, <= 3600 of silence on a
    ``OSSMC_READ_TIMEOUT_S``                                             socket
    ``max_attempts``             ``retry.maxAttempts``       8           integer 1..100: tries per request
    ``OSSMC_MAX_ATTEMPTS``
    ``retry_base_delay_s``       ``retry.baseDelaySeconds``  0.1         seconds 0..3600: first back-off
    ``OSSMC_RETRY_BASE_DELAY_S``
    ``retry_max_delay_s``        ``retry.maxDelaySeconds``   5           seconds ``retry_base_delay_s``..3600:
    ``OSSMC_RETRY_MAX_DELAY_S``                                          longest back-off
    ``wait_timeout_s``           ``waitTimeoutSeconds``      600         seconds > 0, <= 2592000 (30 days) a
    ``OSSMC_WAIT_TIMEOUT_S``                                             reader waits for bytes before a
                                                                         timeout error
    ``owner_check_s``            ``ownerCheckSeconds``       1           seconds > 0, <= 3600 within which a
    ``OSSMC_OWNER_CHECK_S``                                              reader in another process notices
                                                                         that the owner died
                                                                         (``OwnerDiedError``)
    ``body_receiver``            ``bodyReceiver``            "kernel"    "kernel": a ranged GET's body is
    ``OSSMC_BODY_RECEIVER``                                              received without the GIL (plain
                                                                         HTTP with a length); "python":
                                                                         always through ``http.client``
    ``fleet_enabled``            ``fleet.enabled``           False       true: the nodes preparing the same
    ``OSSMC_FLEET_ENABLED``                                              directory share chunks (fleet
                                                                         mode; ``ossmodelconnector[fleet]``)
    ``fleet_master_addr``        ``fleet.masterAddr``        ""          rank 0's address; "" =
    ``OSSMC_FLEET_MASTER_ADDR``                                          ``MASTER_ADDR`` (or
                                                                         ``LWS_LEADER_ADDRESS``)
    ``fleet_port``               ``fleet.port``              0           TCP port 0..65535 of the fleet's
    ``OSSMC_FLEET_PORT``                                                 rendezvous; 0 = ``MASTER_PORT`` + 1
    ``fleet_nodes``              ``fleet.nodes``             0           integer 0..65536; 0 = ``NNODES``,
    ``OSSMC_FLEET_NODES``                                                else ``WORLD_SIZE`` (or
                                                                         ``LWS_GROUP_SIZE``)
    ``fleet_rank``               ``fleet.rank``              -1          this node, 0..nodes-1; -1 =
    ``OSSMC_FLEET_RANK``                                                 ``NODE_RANK``, else ``RANK`` (or
                                                                         ``LWS_WORKER_INDEX``)
    ``fleet_timeout_s``          ``fleet.timeoutSeconds``    30          seconds > 0, <= 3600 the fleet waits
    ``OSSMC_FLEET_TIMEOUT_S``                                            for a node (to form the group, to
                                                                         send or take one chunk) before
                                                                         the others fetch from OSS
    ============================ =========================== =========== ====================================

    Types are strict: an integer field refuses ``True``, ``8.0`` and ``"8"`` (the environment is the only
    source of text, and is parsed); a seconds field takes an integer or a finite float within its bounds
    (:data:`MAX_TIMEOUT_S`, :data:`MAX_WAIT_S`), never ``inf`` or ``nan``.
    ``signatureVersion`` is compared case-insensitively and stored lower-case.

    Raises:
        ConfigError: a value has the wrong type or is out of range; the message names the key, the value
            and what is accepted.
    """

    log_level: int = field(default=DEFAULT_LOG_LEVEL, metadata=_key("logLevel", int, lo=0, hi=3))
    log_path: str = field(default=DEFAULT_LOG_PATH, metadata=_key("logPath", str, check=_check_path))
    audit_path: str = field(default=DEFAULT_AUDIT_PATH, metadata=_key("auditPath", str, check=_check_path))
    prefetch_vcpus: int = field(
        default=DEFAULT_PREFETCH_VCPUS, metadata=_key("prefetch.vcpus", int, lo=1, hi=MAX_CONNECTIONS)
    )
    prefetch_workers: int = field(
        default=DEFAULT_PREFETCH_WORKERS, metadata=_key("prefetch.workers", int, lo=1, hi=MAX_CONNECTIONS)
    )
    fast_list_vcpus: int = field(
        default=DEFAULT_FAST_LIST_VCPUS, metadata=_key("fastList.vcpus", int, lo=1, hi=MAX_CONNECTIONS)
    )
    fast_list_workers: int = field(
        default=DEFAULT_FAST_LIST_WORKERS, metadata=_key("fastList.workers", int, lo=1, hi=MAX_CONNECTIONS)
    )
    chunk_size_mb: int = field(
        default=DEFAULT_CHUNK_SIZE_MB, metadata=_key("chunkSizeMB", int, lo=1, hi=1024)
    )
    small_file_mb: int = field(
        default=DEFAULT_SMALL_FILE_MB, metadata=_key("smallFileMB", int, lo=0, hi=2**30)
    )
    memory_limit_mb: int = field(
        default=DEFAULT_MEMORY_LIMIT_MB, metadata=_key("memoryLimitMB", int, lo=0, hi=2**30)
    )
    gc_idle_seconds: float = field(
        default=DEFAULT_GC_IDLE_SECONDS, metadata=_key("gc.idleSeconds", float, lo=0, hi=MAX_WAIT_S)
    )
    cache_dir: str = field(
        default=DEFAULT_CACHE_DIR,
        metadata=_key("cacheDir", str, check=_check_cache_dir, accepted="an absolute directory path"),
    )
    signature_version: str = field(
        default=DEFAULT_SIGNATURE_VERSION,
        metadata=_key(
            "signatureVersion",
            str,
            check=_check_signature_version,
            accepted='"v1", "v4" or "" (auto: v4 when a region is known, else v1)',
        ),
    )
    region: str = field(
        default=DEFAULT_REGION,
        metadata=_key(
            "region",
            str,
            check=_check_region,
            accepted='a region id such as "cn-hangzhou" (lower-case letters, digits, hyphens) or ""',
        ),
    )
    connect_timeout_s: float = field(
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metadata=_key("timeouts.connectSeconds", float, lo=0, hi=MAX_TIMEOUT_S, lo_exclusive=True),
    )
    read_timeout_s: float = field(
        default=DEFAULT_READ_TIMEOUT_S,
        metadata=_key("timeouts.readSeconds", float, lo=0, hi=MAX_TIMEOUT_S, lo_exclusive=True),
    )
    max_attempts: int = field(
        default=DEFAULT_MAX_ATTEMPTS, metadata=_key("retry.maxAttempts", int, lo=1, hi=100)
    )
    retry_base_delay_s: float = field(
        default=DEFAULT_RETRY_BASE_DELAY_S,
        metadata=_key("retry.baseDelaySeconds", float, lo=0, hi=MAX_TIMEOUT_S),
    )
    retry_max_delay_s: float = field(
        default=DEFAULT_RETRY_MAX_DELAY_S,
        metadata=_key("retry.maxDelaySeconds", float, lo=0, hi=MAX_TIMEOUT_S),
    )
    wait_timeout_s: float = field(
        default=DEFAULT_WAIT_TIMEOUT_S,
        metadata=_key("waitTimeoutSeconds", float, lo=0, hi=MAX_WAIT_S, lo_exclusive=True),
    )
    owner_check_s: float = field(
        default=DEFAULT_OWNER_CHECK_S,
        metadata=_key("ownerCheckSeconds", float, lo=0, hi=MAX_TIMEOUT_S, lo_exclusive=True),
    )
    body_receiver: str = field(
        default=DEFAULT_BODY_RECEIVER,
        metadata=_key(
            "bodyReceiver",
            str,
            check=_check_body_receiver,
            accepted='"kernel" (the default) or "python" (the http.client path, to compare)',
        ),
    )

    fleet_enabled: bool = field(default=DEFAULT_FLEET_ENABLED, metadata=_key("fleet.enabled", bool))
    fleet_master_addr: str = field(
        default=DEFAULT_FLEET_MASTER_ADDR,
        metadata=_key("fleet.masterAddr", str, check=_check_host, accepted="a host name or an IP address"),
    )
    fleet_port: int = field(default=DEFAULT_FLEET_PORT, metadata=_key("fleet.port", int, lo=0, hi=65535))
    fleet_nodes: int = field(
        default=DEFAULT_FLEET_NODES, metadata=_key("fleet.nodes", int, lo=0, hi=MAX_FLEET_NODES)
    )
    fleet_rank: int = field(
        default=DEFAULT_FLEET_RANK, metadata=_key("fleet.rank", int, lo=-1, hi=MAX_FLEET_NODES - 1)
    )
    fleet_timeout_s: float = field(
        default=DEFAULT_FLEET_TIMEOUT_S,
        metadata=_key("fleet.timeoutSeconds", float, lo=0, hi=MAX_TIMEOUT_S, lo_exclusive=True),
    )

    def __post_init__(self) -> None:
        for spec in _SPECS:
            value = _check_value(spec, getattr(self, spec.name), f"Config({spec.name}=...)")
            # Normalising (int -> float, "V4" -> "v4") in a frozen instance, before anyone can see it.
            object.__setattr__(self, spec.name, value)
        if self.retry_max_delay_s < self.retry_base_delay_s:
            raise ConfigError(
                f"retry.maxDelaySeconds (retry_max_delay_s) = {self.retry_max_delay_s!r} is smaller than "
                f"retry.baseDelaySeconds (retry_base_delay_s) = {self.retry_base_delay_s!r}: "
                "the longest back-off must be at least the first one; raise maxDelaySeconds or lower "
                "baseDelaySeconds"
            )
        for what, vcpus, workers in (
            ("prefetch", self.prefetch_vcpus, self.prefetch_workers),
            ("fastList", self.fast_list_vcpus, self.fast_list_workers),
        ):
            if vcpus * workers > MAX_CONNECTIONS:
                raise ConfigError(
                    f"{what}.vcpus x {what}.workers = {vcpus} x {workers} = {vcpus * workers} concurrent "
                    f"connections, more than the accepted {MAX_CONNECTIONS}; lower one of them"
                )

    @property
    def logging_level(self) -> int:
        """``log_level`` as a :mod:`logging` level (``logging.INFO`` for 1)."""
        return _LOGGING_LEVELS[self.log_level]

    @property
    def prefetch_connections(self) -> int:
        """Concurrent connections of the prefetcher: ``prefetch_vcpus * prefetch_workers``."""
        return self.prefetch_vcpus * self.prefetch_workers

    @property
    def fast_list_requests(self) -> int:
        """Concurrent list requests of a fast list: ``fast_list_vcpus * fast_list_workers``."""
        return self.fast_list_vcpus * self.fast_list_workers

    @property
    def chunk_size(self) -> int:
        """Bytes per ranged GET (``chunk_size_mb`` MiB)."""
        return self.chunk_size_mb * MIB

    @property
    def small_file_bytes(self) -> int:
        """Files smaller than this many bytes are downloaded to disk whole."""
        return self.small_file_mb * MIB

    @property
    def memory_limit_bytes(self) -> int | None:
        """The cache budget in bytes, or None when only the free space of ``cache_dir`` bounds it."""
        return self.memory_limit_mb * MIB if self.memory_limit_mb else None

    def resolve_signature_version(self, region: str | None) -> str:
        """The signature version to use once the region is known.

        Args:
            region: the region in effect (``config.region`` or the endpoint's), None or "" if unknown.

        Returns:
            ``"v1"`` or ``"v4"``: ``signature_version`` when set, else v4 with a region and v1 without.

        Raises:
            ConfigError: ``signatureVersion`` is ``v4`` and no region is known.
        """
        if self.signature_version == "v4" and not region:
            raise ConfigError(
                'signatureVersion = "v4" needs a region, and none is known: set "region" (e.g. '
                '"cn-hangzhou"), use an endpoint like oss-<region>.aliyuncs.com, or set signatureVersion "v1"'
            )
        if self.signature_version:
            return self.signature_version
        return "v4" if region else "v1"

    def as_json(self) -> dict[str, Any]:
        """Every setting as the nested camelCase JSON object a config file holds.

        Returns:
            A dict that ``json.dump`` writes and :func:`load_config` reads back into an equal ``Config``.
        """
        out: dict[str, Any] = {}
        for spec in _SPECS:
            *parents, leaf = spec.json.split(".")
            node = out
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = getattr(self, spec.name)
        return out


@dataclass(frozen=True)
class _Spec:
    name: str
    json: str
    env: str
    kind: type
    default: Any
    key: _Key

    def label(self) -> str:
        return f"{self.json} ({self.name}, env {self.env}, default {self.default!r})"

    def accepted(self) -> str:
        k = self.key
        if k.accepted:
            return k.accepted
        if k.kind is str:
            return "a string"
        if k.kind is bool:
            return "true or false (in the environment: 1/0, true/false, yes/no, on/off)"
        noun = "an integer" if k.kind is int else "a number of seconds"
        if k.lo is None:
            return noun
        low = f"{'>' if k.lo_exclusive else '>='} {_num(k.lo)}"
        if k.hi is None:
            return f"{noun} {low}"
        if k.kind is float:
            return f"{noun} {low} and <= {_num(k.hi)}{_duration(k.hi)}"
        return f"{noun} from {_num(k.lo)} to {_num(k.hi)}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _duration(seconds: float) -> str:
    """`` (1 hour)`` after a seconds bound, so a user need not work it out."""
    for unit, size in (("day", 86400), ("hour", 3600)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f" ({count} {unit}{'s' if count > 1 else ''})"
    return ""


def _show(value: Any) -> str:
    """``repr(value)``, except for an integer too long to print (Python refuses past 4300 digits)."""
    try:
        return repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits"


def _build_specs() -> tuple[_Spec, ...]:
    specs = []
    for f in dataclasses.fields(Config):
        key: _Key = f.metadata["key"]
        specs.append(_Spec(f.name, key.json, ENV_PREFIX + f.name.upper(), key.kind, f.default, key))
    return tuple(specs)


_SPECS = _build_specs()
_BY_NAME = {spec.name: spec for spec in _SPECS}
_BY_ENV = {spec.env: spec for spec in _SPECS}


def _build_tree() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for spec in _SPECS:
        *parents, leaf = spec.json.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = spec
    return tree


_TREE = _build_tree()
_JSON_KEYS = tuple(spec.json for spec in _SPECS)


def _invalid(spec: _Spec, value: Any, source: str, why: str) -> ConfigError:
    where = f" ({source})" if source else ""
    return ConfigError(
        f"invalid {spec.label()}: {_show(value)}{where} {why}; accepted: {spec.accepted()}",
    )


def _check_value(spec: _Spec, value: Any, source: str) -> Any:
    """Type-check and range-check one value; return it normalised (int -> float for seconds)."""
    key = spec.key
    if key.kind is str:
        if not isinstance(value, str):
            raise _invalid(spec, value, source, f"is a {type(value).__name__}, not a string")
        if spec.name == "signature_version":
            value = value.lower()
        if key.check is not None:
            problem = key.check(value)
            if problem:
                raise _invalid(spec, value, source, f"is refused: {problem}")
        return value
    if key.kind is bool:
        if not isinstance(value, bool):
            raise _invalid(spec, value, source, f"is a {type(value).__name__}, not true or false")
        return value
    # bool is an int subclass, but ``"prefetch": {"workers": true}`` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(spec, value, source, f"is a {type(value).__name__}, not a number")
    if key.kind is int and not isinstance(value, int):
        raise _invalid(spec, value, source, "is not an integer")
    if key.kind is float:
        try:
            value = float(value)
        except OverflowError:  # an int past 1.8e308: the range check's answer, before float() fails
            raise _invalid(spec, value, source, "is out of range") from None
        if not math.isfinite(value):
            raise _invalid(spec, value, source, "is not finite")
    too_low = key.lo is not None and (value <= key.lo if key.lo_exclusive else value < key.lo)
    too_high = key.hi is not None and value > key.hi
    if too_low or too_high:
        raise _invalid(spec, value, source, "is out of range")
    return value


def _parse_env(spec: _Spec, text: str) -> Any:
    if spec.kind is str:
        return text
    if spec.kind is bool:
        word = text.strip().lower()
        if word in _TRUE_TEXTS or word in _FALSE_TEXTS:
            return word in _TRUE_TEXTS
        raise _invalid(spec, text, f"environment variable {spec.env}", "is not a yes or a no")
    try:
        return int(text.strip(), 10) if spec.kind is int else float(text.strip())
    except ValueError:
        raise _invalid(spec, text, f"environment variable {spec.env}", "is not a number") from None


class _EnvText(str):
    """A value still in its environment-variable text form; parsed only if no higher layer replaces it."""


def _from_environment(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        spec = _BY_ENV.get(name)
        if spec is None:
            if name in NOT_SETTINGS:
                continue
            close = difflib.get_close_matches(name, list(_BY_ENV), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            log.warning("ignoring unknown environment variable %s%s", name, hint)
            continue
        if text == "":
            continue  # ``OSSMC_X=`` is how shells unset a variable for one command
        found[spec.name] = (_EnvText(text), f"environment variable {name}")
    return found


class _Pairs(list[tuple[str, Any]]):
    """A JSON object kept as its (key, value) pairs, so a key given twice is still visible."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _refused_config_file(path: str) -> Callable[[str], ConfigError]:
    def refuse(why: str) -> ConfigError:
        return ConfigError(
            f"config file {path!r} {why}: it is not read; config_path must name a regular JSON file of at "
            f"most {MAX_SETTINGS_FILE_BYTES // MIB} MiB (one with every key is about 1 KiB): fix the path"
        )

    return refuse


def _read_json(path: str) -> _Pairs:
    try:
        text = read_regular_file(path, _refused_config_file(path)).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path!r} does not exist: fix the path, or pass no config path to use the "
            "environment and defaults"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path!r} cannot be read: {exc.strerror}") from None
    try:
        doc = json.loads(text, object_pairs_hook=_Pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path!r} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:  # NaN / Infinity
        raise ConfigError(f"config file {path!r} is not valid JSON: {exc}") from None
    if not isinstance(doc, _Pairs):
        raise ConfigError(
            f"config file {path!r} holds a JSON {type(doc).__name__}, not an object: write "
            '{"logLevel": 1, "prefetch": {"workers": 2}, ...}'
        )
    return doc


def _plain(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _unknown_key(dotted: str, source: str) -> ConfigError:
    if dotted in _JSON_KEYS:  # a literal "prefetch.workers" key, instead of nesting
        *parents, leaf = dotted.split(".")
        nested = "{" + "".join(f'"{p}": {{' for p in parents) + f'"{leaf}": ...' + "}" * (len(parents) + 1)
        return ConfigError(f"key {dotted!r} in {source} must be written as a nested object: {nested}")
    close = difflib.get_close_matches(dotted, _JSON_KEYS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"unknown key {dotted!r} in {source}: {hint}accepted keys: {', '.join(_JSON_KEYS)}",
    )


def _flatten(obj: _Pairs, tree: Mapping[str, Any], prefix: str, source: str, out: dict[str, Any]) -> None:
    seen: set[str] = set()
    for key, value in obj:
        dotted = prefix + key
        if key in seen:
            raise ConfigError(f"key {dotted!r} is given twice in {source}: keep only one of them")
        seen.add(key)
        node = tree.get(key)
        if node is None:
            raise _unknown_key(dotted, source)
        if isinstance(node, dict):
            if not isinstance(value, _Pairs):
                members = ", ".join(f'"{k}": ...' for k in node)
                raise ConfigError(
                    f"key {dotted!r} in {source} is {_plain(value)!r}, but must be an object: "
                    f'"{key}": {{{members}}}'
                )
            _flatten(value, node, dotted + ".", source, out)
        else:
            spec: _Spec = node
            if isinstance(value, (_Pairs, list)):
                kind = "object" if isinstance(value, _Pairs) else "array"
                raise _invalid(spec, _plain(value), source, f"is a JSON {kind}")
            out[spec.name] = value


def _from_file(path: str) -> dict[str, tuple[Any, str]]:
    source = f"config file {path!r}"
    values: dict[str, Any] = {}
    _flatten(_read_json(path), _TREE, "", source, values)
    return {name: (value, source) for name, value in values.items()}


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Config:
    """Build the settings from defaults, ``OSSMC_*`` variables, a JSON file and keyword overrides.

    Each layer overrides the one before it: default < environment < file < keyword. An empty
    ``OSSMC_*`` variable counts as unset.

    Args:
        path: a JSON config file with camelCase keys (``{"prefetch": {"workers": 16}}``); None or "" for
            none.
        **overrides: Python field names (``prefetch_workers=16``) that win over everything else.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: the file is missing, unreadable or not valid JSON (with line and column); a key is
            unknown (the closest accepted one is suggested) or given twice; a value has the wrong type or
            is out of range (the key, value and accepted values are named).

    Example:
        >>> load_config(None, chunk_size_mb=16).chunk_size
        16777216
    """
    layers: dict[str, tuple[Any, str]] = dict(_from_environment(os.environ))
    if path is not None and os.fspath(path) != "":
        layers.update(_from_file(os.fspath(path)))
    for name, value in overrides.items():
        if name not in _BY_NAME:
            close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown config keyword {name!r}: {hint}accepted keywords: {', '.join(_BY_NAME)}",
            )
        layers[name] = (value, f"keyword argument {name}")
    values = {}
    for name, (value, source) in layers.items():
        spec = _BY_NAME[name]
        if isinstance(value, _EnvText):
            value = _parse_env(spec, str(value))
        values[name] = _check_value(spec, value, source)
    config = Config(**values)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "config: %s",
            ", ".join(f"{name}={values[name]!r} from {layers[name][1]}" for name in sorted(layers))
            or "defaults",
        )
    return config
