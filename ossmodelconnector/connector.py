"""The facade: ``OssModelConnector`` wires config, credentials, client, scheduler and streams together.

::

    OssModelConnector(endpoint, cred_provider | cred_path | environment, config_path, **overrides)
        ├── Config (load_config)      ├── CredentialProvider (resolve_credentials)
        ├── OssClient ── pooled ranged GETs ──┐
        └── PrefetchScheduler ── workers ─────┴──> OssStream (open) / list / stats / close
                                              └──> ModelDirectory (prepare_directory: directory/)
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import io
import logging
import os
import threading
import time
import weakref
from typing import Any, Literal, overload

from ossmodelconnector.cache.attaching import AttachSettings
from ossmodelconnector.config import Config, load_config
from ossmodelconnector.directory.attached import AttachedDirectory, live_owner, prepare_lock
from ossmodelconnector.directory.exported import export_directory
from ossmodelconnector.directory.lazy.residency import Residency
from ossmodelconnector.directory.model_directory import ModelDirectory
from ossmodelconnector.directory.prepare import PreparedDirectory, prepare_directory
from ossmodelconnector.directory.safety import normalize_model_dir
from ossmodelconnector.directory.termination import exit_on_sigterm
from ossmodelconnector.errors import ClosedError, ConfigError, InvalidURIError
from ossmodelconnector.fetch.prefetch import PrefetchScheduler
from ossmodelconnector.fetch.stream import OssStream, open_stream
from ossmodelconnector.logfiles import configure_logging
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.oss.client import OssClient
from ossmodelconnector.oss.credentials import resolve_credentials
from ossmodelconnector.oss.listing import fast_list, list_objects
from ossmodelconnector.oss.request_log import open_audit
from ossmodelconnector.oss.uri import is_valid_bucket_name, parse_endpoint, parse_oss_uri, parse_prefix_uri

__all__ = ["OssModelConnector"]

log = logging.getLogger(__name__)


class OssModelConnector:
    """Read models and objects from OSS: streams, listings, and (later) prepared model directories.

    Args:
        endpoint: ``oss-cn-beijing-internal.aliyuncs.com`` (http by default, like the reference product),
            ``https://...`` or ``http://127.0.0.1:PORT``. An IP or ``localhost`` means path-style
            addressing; a domain means virtual-hosted style (``bucket.endpoint``).
        cred_provider: any oss2 ``CredentialsProvider`` (asked again as STS tokens rotate), or one of
            ours; takes precedence over ``cred_path`` and the environment.
        cred_path: a JSON file ``{"AccessKeyId", "AccessKeySecret", "SecurityToken"?, "Expiration"?}``,
            re-read before it expires.
        config_path: a JSON config file (see the README for its keys); "" for defaults + environment.
        **overrides: config fields by their Python names (``chunk_size_mb=4``), which win over the file.

    Raises:
        ConfigError: a bad endpoint, config file or override (the message names the key and the fix).
        CredentialsError: no usable credentials (the message lists the three ways to give them).

    Example:
        >>> with OssModelConnector("http://127.0.0.1:9000", cred_path="creds.json") as connector:
        ...     with connector.open("oss://bucket/model.safetensors") as stream:
        ...         header_length = int.from_bytes(stream.read(8), "little")
    """

    def __init__(
        self,
        endpoint: str,
        cred_provider: object | None = None,
        cred_path: str = "",
        config_path: str = "",
        **overrides: Any,
    ) -> None:
        self._closed = True  # until fully built, so that a failed __init__ makes close() a no-op
        self._lock = threading.Lock()
        self.config: Config = load_config(config_path or None, **overrides)
        self.endpoint = parse_endpoint(endpoint, self.config.region)
        credentials = resolve_credentials(cred_provider, cred_path)
        self._undo_logging = configure_logging(self.config)
        try:
            self._audit = open_audit(self.config.audit_path)
        except BaseException:
            self._undo_logging()  # a refused auditPath must not leave the logPath handler attached
            raise
        try:
            self._client = OssClient(self.endpoint, credentials, self.config, self._audit)
        except BaseException:
            self._audit.close()
            self._undo_logging()
            raise
        self._scheduler = PrefetchScheduler(self.config.prefetch_connections, self.config.memory_limit_bytes)
        # Lazy directories' files, kept within memoryLimitMB together by evicting whole files.
        self._residency = Residency(self._scheduler, self.config.memory_limit_bytes)
        self._streams: weakref.WeakSet[OssStream] = weakref.WeakSet()
        # by model_dir; closed ones stay for stats()
        self._prepared: dict[str, PreparedDirectory | AttachedDirectory] = {}
        self._started = time.monotonic()
        self._closed = False
        # A connector left open at interpreter exit still stops its workers and frees its memory.
        self._atexit = _close_at_exit(self)
        atexit.register(self._atexit)
        log.info(
            "connector for %s (signature %s, %d connections, chunk %d MiB)",
            self.endpoint,
            self._client.signature_version,
            self.config.prefetch_connections,
            self.config.chunk_size_mb,
        )

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> OssModelConnector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never raise from a finalizer; at interpreter exit modules may already be half torn down.
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Stop the workers, close every stream and connection, release memory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            directories = list(self._prepared.values())
        atexit.unregister(self._atexit)
        for directory in directories:  # before the scheduler: their files are unregistered first
            directory.close()
        for stream in list(self._streams):
            stream.close()
        self._scheduler.close()
        self._client.close()
        self._audit.close()
        self._undo_logging()
        log.info("connector for %s closed", self.endpoint)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClosedError(f"{what}: this OssModelConnector is closed; create a new one")

    def __repr__(self) -> str:
        return f"OssModelConnector({str(self.endpoint)!r}{', closed' if self._closed else ''})"

    # -- objects ---------------------------------------------------------------------------------------

    @overload
    def open(self, uri: str, binary: Literal[True] = True) -> OssStream: ...

    @overload
    def open(self, uri: str, binary: Literal[False]) -> io.TextIOWrapper: ...

    def open(self, uri: str, binary: bool = True) -> OssStream | io.TextIOWrapper:
        """Open an object as a read-only stream; prefetching starts at once, in the order of opening.

        Args:
            uri: ``oss://bucket/key`` (the key is taken literally: no percent-decoding).
            binary: a binary stream (``read``, ``readinto``, ``seek``, ``mmap``...) or, when False, a
                UTF-8 text stream over it.

        Returns:
            An :class:`~ossmodelconnector.fetch.stream.OssStream` (``.size``, ``.name``, ``.mmap()``), or an
            ``io.TextIOWrapper`` over one.

        Raises:
            InvalidURIError: ``uri`` is not ``oss://bucket/key`` with a key.
            ObjectNotFoundError: no such bucket or object.
            AccessDeniedError: the credentials may not read it.
            ClosedError: the connector is closed.
        """
        self._check_open(f"open({uri!r})")
        parsed = parse_oss_uri(uri)
        if not parsed.key or parsed.key.endswith("/"):
            raise InvalidURIError(
                f"open({uri!r}): the URI names a prefix, not an object; give the full key "
                f"(oss://{parsed.bucket}/path/to/file), or use list() to see what is there"
            )
        info = self._client.head_object(parsed.bucket, parsed.key)
        stream = open_stream(
            info,
            self._client.make_fetch_into(info),
            self._scheduler,
            binary=binary,
            chunk_size=self.config.chunk_size,
            wait_timeout_s=self.config.wait_timeout_s,
        )
        binary_stream = stream if isinstance(stream, OssStream) else stream.buffer
        assert isinstance(binary_stream, OssStream)
        self._streams.add(binary_stream)
        return stream

    def list(self, bucket: str, prefix: str = "", fast: bool = False) -> list[ObjectInfo]:
        """Every object under ``prefix`` (all pages), with key, size, etag and last_modified.

        Args:
            bucket: the bucket name.
            prefix: the key prefix; "" for the whole bucket.
            fast: list with ``fastList.vcpus x fastList.workers`` requests in flight, splitting the key
                space along sub-folders. The same set of objects; order sorted by key either way.

        Returns:
            A list of :class:`~ossmodelconnector.objects.ObjectInfo`; empty when nothing matches.

        Raises:
            ConfigError: ``bucket`` is not a valid bucket name.
            ObjectNotFoundError: the bucket does not exist.
        """
        self._check_open(f"list({bucket!r}, {prefix!r})")
        if not is_valid_bucket_name(bucket):
            raise ConfigError(
                f"list({bucket!r}): not a bucket name (3-63 lowercase letters, digits and hyphens); "
                "pass the bucket alone, e.g. list('my-bucket', 'models/qwen/')"
            )
        if fast:
            return fast_list(self._client, bucket, prefix, self.config.fast_list_requests)
        return list_objects(self._client, bucket, prefix)

    # -- directories -----------------------------------------------------------------------------------

    def prepare_directory(
        self,
        oss_dir: str,
        model_dir: str | os.PathLike[str],
        *,
        lazy: bool = False,
        wait: bool = False,
        progress: bool | None = None,
        gc_idle_seconds: float | None = None,
    ) -> ModelDirectory:
        """Make an OSS prefix a local model directory that frameworks can read while it is arriving.

        Lists the prefix, downloads the files smaller than ``smallFileMB`` into ``model_dir`` at once,
        and makes every larger file an entry (a symlink to a shared-memory segment of its full size) that
        fills chunk by chunk, in name order, the first chunk of every file first. Reads in this process
        (``safe_open``, ``load_file``, ``torch.load``, ``open``) wait for exactly the bytes they touch.
        ``model_dir`` is cleaned first, but only if it is empty, new, or was prepared before: ``/``, the
        home directory, a symlink, or a foreign non-empty directory are refused with nothing deleted.
        Preparing the same directory again replaces this connector's earlier prepare of it.

        One copy per node: when another live process already prepared the same URI into the same
        directory (or is preparing it: this call waits for it), nothing is downloaded here; the result is
        an :class:`~ossmodelconnector.directory.attached.AttachedDirectory` whose reads wait on that
        process's cache. Child processes (``spawn``, ``subprocess``) read through the cache with no code
        of their own: the directory is exported in ``OSSMC_PREPARED_DIRS`` while it is open,
        and the start-up hook (``ossmodelconnector.pth``) attaches them.

        Args:
            oss_dir: ``oss://bucket/prefix/`` (a missing final ``/`` is added; ``oss://bucket/`` is the
                whole bucket). Keys are taken literally.
            model_dir: the local directory; created (mode 0700) if missing.
            lazy: the web UI's mode: every large file's entry (right name, right size) exists at once,
                but nothing large is fetched until a reader opens it; its first open starts the whole
                file's prefetch, in order, and reads wait only for their bytes. Files are kept within
                ``memoryLimitMB`` by evicting whole files no reader uses (least recently used first); an
                evicted file keeps its entry and is fetched again when opened again. See :meth:`gc` and
                :meth:`status`.
            wait: return only when every large file is local and its CRC-64 verified, for readers the
                hooks do not cover (native code, other programs).
            progress: a tqdm bar (bytes, rate) on stderr while large files arrive; None: only when stderr
                is a terminal (never in lazy mode).
            gc_idle_seconds: with ``lazy``: a file no reader used for this many seconds is released by a
                background timer; None: ``gc.idleSeconds`` (0 = never).

        Returns:
            A :class:`~ossmodelconnector.ModelDirectory` (``.placement``, ``.wait()``, ``.stats()``,
            ``.file_states()``): a ``PreparedDirectory``, or an ``AttachedDirectory`` when another process
            owns the download; the connector keeps it and closes it on :meth:`close`.

        Raises:
            InvalidURIError: ``oss_dir`` is not ``oss://bucket/prefix/``.
            UnsafePathError: ``model_dir`` must not be cleaned, or a key would escape it (``..``...).
            ObjectNotFoundError: nothing under the prefix, or no such bucket.
            OutOfMemoryError: the large files fit neither in ``cacheDir`` nor on the disk.
            ConnectorError: a download failed (of a small file; of any file with ``wait=True``).
            ConfigError: ``lazy`` with ``wait``, or a bad ``gc_idle_seconds``.
            ClosedError: the connector is closed.
            RequestTimeoutError: another process kept preparing the directory for ``waitTimeoutSeconds``.

        Example:
            >>> connector.prepare_directory("oss://models/qwen2-7b/", "/tmp/qwen2-7b")
            >>> model = AutoModelForCausalLM.from_pretrained("/tmp/qwen2-7b")
        """
        self._check_open(f"prepare_directory({oss_dir!r}, {os.fspath(model_dir)!r})")
        path = normalize_model_dir(model_dir)
        with self._lock:
            previous = self._prepared.get(path)
        if previous is not None:
            previous.close()  # its files are about to be cleaned: release them first
        exit_on_sigterm()  # a SIGTERM'd process would otherwise leave the model in /dev/shm
        bucket, prefix = parse_prefix_uri(oss_dir)
        with prepare_lock(path, self.config.wait_timeout_s):
            owner = live_owner(path, f"oss://{bucket}/{prefix}", str(self.endpoint))
            if owner is not None:
                return self._attach(path, f"oss://{bucket}/{prefix}", owner["pid"], wait=wait)
            directory = prepare_directory(
                self._client,
                self._scheduler,
                self.config,
                oss_dir,
                model_dir,
                namespace=str(self.endpoint),
                lazy=lazy,
                wait=wait,
                progress=progress,
                on_start=self._keep_directory,
                residency=self._residency,
                gc_idle_seconds=gc_idle_seconds,
            )
        if self._closed:  # the connector was closed meanwhile, by another thread
            directory.close()
            self._check_open(f"prepare_directory({oss_dir!r})")
        return directory

    def _attach(self, path: str, uri: str, owner_pid: int, *, wait: bool) -> AttachedDirectory:
        settings = AttachSettings(
            owner_check_s=self.config.owner_check_s, wait_timeout_s=self.config.wait_timeout_s
        )
        directory = AttachedDirectory(path, uri, owner_pid, settings)
        self._keep_directory(directory)
        try:
            export_directory(path)
            if wait:
                directory.wait()
        except BaseException:
            directory.close()
            raise
        return directory

    def _keep_directory(self, directory: PreparedDirectory | AttachedDirectory) -> None:
        with self._lock:
            self._prepared.pop(directory.model_dir, None)
            self._prepared[directory.model_dir] = directory  # re-inserted: the latest is last

    def stats(self) -> dict[str, Any]:
        """Counters since the connector was created.

        Returns:
            ``requests``, ``retries``, ``bytes`` (fetched), ``errors``, ``connections``,
            ``elapsed_s``, ``throughput_gbps`` (bytes fetched per second of the connector's life, in
            GB/s), ``held_bytes`` (memory the cache holds now; ``lazy_held_bytes`` of it by lazy
            directories' files, kept within ``memory_limit_bytes``) and ``open_streams``; for prepared
            directories: ``time_to_first_byte_s`` (of the latest prepare: seconds from its start to its
            first byte on local storage; None before), ``directories`` (``{model_dir: {"uri",
            "placement", "files", "bytes", "started_at", "ready_at", "finished_at", "seconds",
            "throughput_gbps", "time_to_first_byte_s", "failed", "closed", ...}}``) and ``files``
            (``{path: {"size", "state", "percent", "first_byte_at", "done_at"}}``, ``state`` one of
            ``"not fetched"``, ``"fetching"``, ``"cached"``, ``"evicted"``, ``"failed"``; a lazy file
            also has ``"readers"``, ``"evictions"``, ``"held_bytes"``, ``"last_used_at"``; times are
            ``time.time()``).
        """
        stats: dict[str, Any] = dict(self._client.stats())
        elapsed = time.monotonic() - self._started
        stats["elapsed_s"] = elapsed
        stats["throughput_gbps"] = stats["bytes"] / elapsed / 1e9 if elapsed > 0 else 0.0
        stats["held_bytes"] = self._scheduler.held_bytes + self._residency.held_bytes
        stats["lazy_held_bytes"] = self._residency.held_bytes
        stats["memory_limit_bytes"] = self.config.memory_limit_bytes
        stats["open_streams"] = sum(1 for stream in self._streams if not stream.closed)
        with self._lock:
            directories = list(self._prepared.values())
        summaries: dict[str, dict[str, Any]] = {}
        files: dict[str, Any] = {}
        for directory in directories:
            summary = directory.stats()
            files.update(summary.pop("states"))
            summaries[directory.model_dir] = summary
        latest = summaries[directories[-1].model_dir] if directories else {}
        stats["time_to_first_byte_s"] = latest.get("time_to_first_byte_s")
        stats["directories"] = summaries
        stats["files"] = files
        return stats

    def status(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """The state of one file of a prepared directory (what the web UI shows next to a model).

        Args:
            path: the file's path in a prepared directory (relative paths are taken from the current
                directory).

        Returns:
            ``{"size", "state", "percent", ...}``: ``state`` is ``"not fetched"``, ``"fetching"`` (with
            ``percent``), ``"cached"``, ``"evicted"`` or ``"failed"``; a lazy file also shows
            ``"readers"``, ``"evictions"``, ``"held_bytes"`` and ``"last_used_at"``.

        Raises:
            FileNotFoundError: ``path`` is not a file of a directory this connector prepared.
        """
        absolute = os.path.abspath(os.fspath(path))
        with self._lock:
            directories = list(self._prepared.values())
        # The entry itself is a symlink to a segment: resolve its folder, not the entry.
        resolved = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
        for directory in reversed(directories):  # the latest prepare of a directory wins
            states = directory.file_states()
            state = states.get(absolute)
            if state is None:  # another spelling of the same file (a symlinked parent, ...)
                root = os.path.realpath(directory.model_dir)
                if resolved.startswith(root + os.sep):
                    state = states.get(directory.model_dir + resolved[len(root) :])
            if state is not None:
                return state
        raise FileNotFoundError(
            f"status({os.fspath(path)!r}): not a file of a directory this connector prepared "
            f"({', '.join(directory.model_dir for directory in directories) or 'none'}); give the path of "
            "a file inside one"
        )

    def gc(self, idle_seconds: float | None = None) -> builtins.list[dict[str, Any]]:
        """Release, now, the lazy files that no reader uses and nobody read for ``idle_seconds``.

        A file is in use while it is open (a stream, a ``safe_open`` handle, a load in progress) or while
        tensors made from it still map it; those are never released. A released file keeps its entry and
        is fetched again when opened. Each release is logged (INFO) with its reason.

        Args:
            idle_seconds: seconds since the last read; None: each directory's ``gc.idleSeconds`` (and
                when that is 0, every file not in use).

        Returns:
            ``[{"path", "bytes", "reason"}]`` for every file released.

        Raises:
            ClosedError: the connector is closed.
            ConfigError: a negative ``idle_seconds``.
        """
        self._check_open("gc()")
        if idle_seconds is not None and not idle_seconds >= 0:
            raise ConfigError(
                f"gc(idle_seconds={idle_seconds!r}): give seconds >= 0, or None for gc.idleSeconds"
            )
        with self._lock:
            lazy = [
                directory.lazy_files
                for directory in self._prepared.values()
                if isinstance(directory, PreparedDirectory)
                and directory.lazy_files is not None
                and not directory.closed
            ]
        released = []
        for files in lazy:
            for release in files.collect(idle_seconds, why="connector.gc()"):
                released.append({"path": release.path, "bytes": release.nbytes, "reason": release.reason})
        return released


def _close_at_exit(connector: OssModelConnector) -> Any:
    """An atexit callback that holds the connector weakly, so registering it does not keep it alive."""
    ref = weakref.ref(connector)
    pid = os.getpid()

    def close() -> None:
        target = ref()
        if target is not None and os.getpid() == pid:
            target.close()

    return close
