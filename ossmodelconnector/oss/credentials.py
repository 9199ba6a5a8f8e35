"""Where the access key comes from: providers that are cheap to ask on every request.

::

    cred_provider (oss2 CredentialsProvider, or ours) ─┐
    cred_path (JSON file, re-read before it expires) ──┼─ resolve_credentials ─> CredentialProvider.get()
    OSS_ACCESS_KEY_ID / _SECRET / OSS_SESSION_TOKEN ───┘      (first given wins)      on every request

The client calls ``get()`` before signing each request and ``invalidate()`` when the server refuses the
token, so every provider caches inside and re-reads only when something may have changed. A secret or
token never appears in a ``repr``, a log line or an exception message.

Every value is checked where it enters (``credential_values.py``: whitespace around it removed with a
WARNING, any other character outside printable ASCII refused, never shown).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from ossmodelconnector.errors import CredentialsError
from ossmodelconnector.oss.credential_values import Credentials, clean_value
from ossmodelconnector.regular_files import MAX_SETTINGS_FILE_BYTES, read_regular_file

__all__ = [
    "DEFAULT_MIN_REREAD_INTERVAL_S",
    "DEFAULT_REFRESH_MARGIN_S",
    "ENV_ACCESS_KEY_ID",
    "ENV_ACCESS_KEY_SECRET",
    "ENV_SESSION_TOKEN",
    "CredentialProvider",
    "Credentials",
    "EnvironmentCredentialProvider",
    "FileCredentialProvider",
    "Oss2ProviderAdapter",
    "StaticCredentialProvider",
    "parse_expiration",
    "resolve_credentials",
]

log = logging.getLogger(__name__)

ENV_ACCESS_KEY_ID = "OSS_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "OSS_ACCESS_KEY_SECRET"
ENV_SESSION_TOKEN = "OSS_SESSION_TOKEN"

# STS tokens are usually issued for an hour or more; re-reading 5 minutes early leaves time for the
# process that rotates the file, and for requests already signed, to finish.
DEFAULT_REFRESH_MARGIN_S = 300.0
# Inside the refresh margin a file that has not changed is re-read at most this often, so a writer that
# is late does not turn every request into a file read.
DEFAULT_MIN_REREAD_INTERVAL_S = 1.0

_HOW_TO_GIVE = (
    "give credentials in one of three ways: pass cred_provider= (any oss2 CredentialsProvider, e.g. "
    "oss2.credentials.EnvironmentVariableCredentialsProvider()), pass cred_path= (a JSON file "
    '{"AccessKeyId": ..., "AccessKeySecret": ..., "SecurityToken": ..., "Expiration": ...}), or set '
    f"{ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET} (and {ENV_SESSION_TOKEN} for an STS token)"
)


@runtime_checkable
class CredentialProvider(Protocol):
    """What the client asks for credentials: ``get()`` before each request, ``invalidate()`` on refusal."""

    def get(self) -> Credentials:
        """Return the current credentials; cheap enough to call on every request (cache inside)."""
        ...

    def invalidate(self) -> None:
        """The server refused the credentials (expired or revoked token): the next ``get()`` re-reads."""
        ...


class StaticCredentialProvider:
    """Always the same credentials.

    Args:
        credentials: what every ``get()`` returns.
    """

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get(self) -> Credentials:
        """Return the credentials given at construction."""
        return self._credentials

    def invalidate(self) -> None:
        """Nothing to re-read: a static key that the server refuses stays refused."""

    def __repr__(self) -> str:
        return f"StaticCredentialProvider(access_key_id={self._credentials.access_key_id!r})"


class Oss2ProviderAdapter:
    """Use any oss2 ``CredentialsProvider`` (or any object with ``get_credentials()``) as a provider.

    The wrapped provider is asked again on every ``get()``: oss2's providers are cheap to ask
    (``StaticCredentialsProvider`` returns a stored object, ``EnvironmentVariableCredentialsProvider``
    reads three variables, ``EcsRamRoleCredentialsProvider`` and the STS providers cache and refresh the
    token themselves before it expires), and asking each time is the only way to see a rotated STS token
    without knowing the provider's expiry rules. A provider known to never change (``static=True``, the
    default for ``oss2.credentials.StaticCredentialsProvider``) is asked once.

    Args:
        provider: the oss2 provider; its ``get_credentials()`` returns an object with
            ``get_access_key_id()``, ``get_access_key_secret()``, ``get_security_token()`` (or the
            attributes of the same names) and, optionally, ``expiration`` in epoch seconds.
        static: ask only once; None detects ``oss2.credentials.StaticCredentialsProvider``.

    Raises:
        CredentialsError: ``provider`` has no ``get_credentials`` method.
    """

    def __init__(self, provider: Any, *, static: bool | None = None) -> None:
        if not callable(getattr(provider, "get_credentials", None)):
            raise CredentialsError(
                f"cred_provider {type(provider).__name__} has no get_credentials() method: pass an oss2 "
                "CredentialsProvider or an object with get() and invalidate()"
            )
        self._provider = provider
        self._static = _is_oss2_static(provider) if static is None else static
        self._lock = threading.Lock()
        self._last_raw: tuple[Any, ...] | None = None
        self._last: Credentials | None = None
        self._warned: set[str] = set()

    def get(self) -> Credentials:
        """Ask the wrapped provider (once, if static) and convert its answer.

        Returns:
            The credentials; the same object as last time when nothing changed.

        Raises:
            CredentialsError: the provider failed or returned no usable credentials (also: a value holds a
                character other than printable ASCII; whitespace around a value is removed with a WARNING).
        """
        last = self._last
        if self._static and last is not None:
            return last
        name = type(self._provider).__name__
        try:
            raw = self._provider.get_credentials()
        except CredentialsError:
            raise
        except Exception as exc:
            # A provider's failure is a credentials problem for the caller, whatever library raised it.
            raise CredentialsError(
                f"cred_provider {name}.get_credentials() failed ({type(exc).__name__}: {_first_line(exc)}): "
                "check the provider's configuration"
            ) from exc
        if raw is None:
            raise CredentialsError(
                f"cred_provider {name}.get_credentials() returned None: it must return credentials"
            )
        fields = (
            _read_field(raw, "access_key_id"),
            _read_field(raw, "access_key_secret"),
            _read_field(raw, "security_token"),
            getattr(raw, "expiration", None),
        )
        with self._lock:
            if self._last is not None and fields == self._last_raw:
                return self._last
            source = f"cred_provider {name}.get_credentials()"
            values: list[str] = []
            for value, what in (
                (fields[0], "access key id"),
                (fields[1], "access key secret"),
                (fields[2] or "", "security token"),
            ):
                if isinstance(value, str):
                    value = clean_value(value, source, what, self._warned)
                if (not value and what != "security token") or not isinstance(value, str):
                    raise CredentialsError(
                        f"{source} returned credentials with an empty or non-string {what}: check the "
                        "provider's configuration"
                    )
                values.append(value)
            expiration = (
                fields[3] if isinstance(fields[3], (int, float)) and not isinstance(fields[3], bool) else None
            )
            creds = Credentials(values[0], values[1], values[2] or None, expiration)
            if self._last is not None:
                log.debug(
                    "cred_provider %s returned new credentials (access key id %s)", name, creds.access_key_id
                )
            self._last_raw, self._last = fields, creds
            return creds

    def invalidate(self) -> None:
        """Forget the converted credentials; the wrapped provider is asked again by the next ``get()``."""
        with self._lock:
            self._last_raw = self._last = None

    def __repr__(self) -> str:
        return f"Oss2ProviderAdapter({type(self._provider).__name__}, static={self._static})"


def _is_oss2_static(provider: Any) -> bool:
    try:
        from oss2.credentials import StaticCredentialsProvider
    except ImportError:  # pragma: no cover - oss2 is a dependency
        return False
    return isinstance(provider, StaticCredentialsProvider)


def _read_field(raw: Any, name: str) -> Any:
    getter = getattr(raw, f"get_{name}", None)
    return getter() if callable(getter) else getattr(raw, name, None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no message"


class EnvironmentCredentialProvider:
    """Credentials from ``OSS_ACCESS_KEY_ID``, ``OSS_ACCESS_KEY_SECRET`` and ``OSS_SESSION_TOKEN``.

    The variables are read by the first ``get()`` and again after ``invalidate()``.

    Args:
        environ: the mapping to read; ``os.environ`` when None.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._lock = threading.Lock()
        self._cached: Credentials | None = None
        self._warned: set[str] = set()

    def get(self) -> Credentials:
        """Return the credentials from the environment.

        Raises:
            CredentialsError: a required variable is missing or empty, or a variable holds a character
                other than printable ASCII (the variable is named, never its value); whitespace around a
                value is removed with a WARNING.
        """
        cached = self._cached
        if cached is not None:
            return cached
        with self._lock:
            if self._cached is None:
                self._cached = self._read()
            return self._cached

    def _variable(self, name: str) -> str:
        return clean_value(self._environ.get(name, ""), "environment", f"variable {name}", self._warned)

    def _read(self) -> Credentials:
        key_id = self._variable(ENV_ACCESS_KEY_ID)
        secret = self._variable(ENV_ACCESS_KEY_SECRET)
        missing = [
            name
            for name, value in ((ENV_ACCESS_KEY_ID, key_id), (ENV_ACCESS_KEY_SECRET, secret))
            if not value
        ]
        if missing:
            raise CredentialsError(
                f"environment variable{'s' if len(missing) > 1 else ''} {' and '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not set or empty; {_HOW_TO_GIVE}"
            )
        token = self._variable(ENV_SESSION_TOKEN) or None
        log.debug("credentials from the environment (access key id %s, token %s)", key_id, token is not None)
        return Credentials(key_id, secret, token)

    def invalidate(self) -> None:
        """Re-read the variables on the next ``get()``."""
        with self._lock:
            self._cached = None

    def __repr__(self) -> str:
        return "EnvironmentCredentialProvider()"


def parse_expiration(text: str) -> float:
    """Epoch seconds of an ISO 8601 time such as ``2026-11-25T10:00:00Z`` (no zone means UTC).

    Args:
        text: the ``Expiration`` field of an STS credentials document.

    Returns:
        Epoch seconds.

    Raises:
        ValueError: not an ISO 8601 date and time.
    """
    stamp = text.strip()
    if stamp[-1:] in ("Z", "z"):
        stamp = stamp[:-1] + "+00:00"  # Python 3.10's fromisoformat does not read "Z"
    parsed = _dt.datetime.fromisoformat(stamp)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.timestamp()


_Stamp = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns): "has the file changed?"


class FileCredentialProvider:
    """Credentials from a JSON file that another process rotates.

    The file holds ``{"AccessKeyId": ..., "AccessKeySecret": ..., "SecurityToken": ..., "Expiration":
    "2026-11-25T10:00:00Z"}`` (the last two optional; other fields are ignored). It is read again when
    its modification time, size or inode changed (one ``stat`` per ``get()``), when ``Expiration`` is
    less than ``refresh_margin_s`` away (at most every ``min_reread_interval_s``), and after
    ``invalidate()``. If a re-read finds the file half-written while the cached credentials have not
    expired, the cached ones are kept and the file is tried again when it changes. Thread-safe.

    Args:
        path: the JSON file.
        refresh_margin_s: re-read this long before ``Expiration``.
        min_reread_interval_s: inside the margin, re-read an unchanged file at most this often.
        clock: epoch seconds now (tests pass a fake clock).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        min_reread_interval_s: float = DEFAULT_MIN_REREAD_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self._margin_s = refresh_margin_s
        self._min_interval_s = min_reread_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: Credentials | None = None
        self._stamp: _Stamp | None = None
        self._read_at = -math.inf
        self._warned: set[str] = set()

    def get(self) -> Credentials:
        """Return the file's credentials, re-reading it when it may have changed.

        Raises:
            CredentialsError: the file is missing, unreadable, not a regular file (a FIFO, a device...),
                larger than 1 MiB, not JSON, lacks a field, has a field of the wrong type or one with a
                character other than printable ASCII (the path and the field are named, never a value;
                whitespace around a value is removed with a WARNING), or its credentials have expired and
                no newer ones were written.
        """
        with self._lock:
            stamp = self._stat()
            now = self._clock()
            cached = self._cached
            if cached is not None and stamp == self._stamp:
                near_expiry = cached.expires_within(self._margin_s, now)
                if not near_expiry or now - self._read_at < self._min_interval_s:
                    return self._usable(cached, now)
            try:
                fresh = self._read()
            except CredentialsError as exc:
                if cached is None or cached.expires_within(0.0, now):
                    raise
                # Likely caught the writer mid-rewrite; keep what works, retry once the file changes.
                log.warning("keeping the previous credentials: %s", exc)
                self._stamp, self._read_at = stamp, now
                return cached
            if cached is not None and fresh != cached:
                log.info(
                    "credentials file %s re-read: new credentials (access key id %s)",
                    self.path,
                    fresh.access_key_id,
                )
            self._cached, self._stamp, self._read_at = fresh, stamp, now
            return self._usable(fresh, now)

    def invalidate(self) -> None:
        """Re-read the file on the next ``get()``, whatever its modification time."""
        with self._lock:
            self._cached = None
            self._stamp = None

    def _usable(self, creds: Credentials, now: float) -> Credentials:
        if creds.expires_within(0.0, now):
            assert creds.expires_at is not None
            when = _dt.datetime.fromtimestamp(creds.expires_at, _dt.timezone.utc).isoformat()
            raise CredentialsError(
                f"credentials file {self.path!r} holds credentials that expired at {when}: the process that "
                "writes this file must rotate it before Expiration"
            )
        return creds

    def _stat(self) -> _Stamp | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # _read() reports why
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def _source(self) -> str:
        return f"credentials file {self.path!r}"

    def _fail(self, why: str) -> CredentialsError:
        return CredentialsError(f"{self._source} {why}")

    def _refuse_file(self, why: str) -> CredentialsError:
        return self._fail(
            f"{why}: it is not read; cred_path must name a regular JSON file of at most "
            f"{MAX_SETTINGS_FILE_BYTES // (1024 * 1024)} MiB (one with an STS token is a few KiB): fix the "
            "path"
        )

    def _read(self) -> Credentials:
        try:
            text = read_regular_file(self.path, self._refuse_file).decode("utf-8")
        except FileNotFoundError:
            raise self._fail(f"does not exist: fix cred_path, or {_HOW_TO_GIVE}") from None
        except UnicodeDecodeError:
            raise self._fail("is not UTF-8 text") from None
        except CredentialsError:  # refused by _refuse_file; a PermissionError, so an OSError too
            raise
        except OSError as exc:
            raise self._fail(f"cannot be read: {exc.strerror}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            # Not chained: the decode error keeps the whole document, secret included.
            raise self._fail(
                f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(doc, dict):
            raise self._fail(
                f"holds a JSON {type(doc).__name__}, not an object with AccessKeyId and AccessKeySecret"
            )
        values: dict[str, str | None] = {}
        for name, required in (
            ("AccessKeyId", True),
            ("AccessKeySecret", True),
            ("SecurityToken", False),
            ("Expiration", False),
        ):
            value = doc.get(name)
            if value is None or value == "":
                if required:
                    raise self._fail(f"has no {name} field (or it is empty): it must be a non-empty string")
                values[name] = None
            elif not isinstance(value, str):
                raise self._fail(f"field {name} is a JSON {type(value).__name__}, not a string")
            else:
                if name != "Expiration":  # a date, checked below
                    value = clean_value(value, self._source, f"field {name}", self._warned)
                if not value and required:
                    raise self._fail(f"has no {name} field (or it is empty): it must be a non-empty string")
                values[name] = value or None
        expires_at = None
        if values["Expiration"] is not None:
            try:
                expires_at = parse_expiration(values["Expiration"])
            except ValueError:
                raise self._fail(
                    f"field Expiration {values['Expiration']!r} is not an ISO 8601 time "
                    "like 2026-11-25T10:00:00Z"
                ) from None
        key_id, secret = values["AccessKeyId"], values["AccessKeySecret"]
        assert key_id is not None and secret is not None
        return Credentials(key_id, secret, values["SecurityToken"], expires_at)

    def __repr__(self) -> str:
        return f"FileCredentialProvider({self.path!r})"


def resolve_credentials(
    cred_provider: object | None = None, cred_path: str | os.PathLike[str] = ""
) -> CredentialProvider:
    """Pick the credential source: ``cred_provider``, else ``cred_path``, else the environment.

    Args:
        cred_provider: one of ours (``get()`` + ``invalidate()``), any oss2 ``CredentialsProvider`` (or
            object with ``get_credentials()``), or a :class:`Credentials`.
        cred_path: a JSON credentials file (see :class:`FileCredentialProvider`).

    Returns:
        The provider. A file or the environment is read once here, so that a missing or malformed
        source fails now rather than at the first request.

    Raises:
        CredentialsError: ``cred_provider`` is of an unusable type; the file is unusable; or nothing is
            given and the environment lacks the variables (the message lists the three ways).

    Example:
        >>> import oss2
        >>> provider = resolve_credentials(oss2.credentials.StaticCredentialsProvider("id", "secret"))
        >>> provider.get().access_key_id
        'id'
    """
    if cred_provider is not None:
        if isinstance(cred_provider, Credentials):
            return StaticCredentialProvider(cred_provider)
        if isinstance(cred_provider, CredentialProvider):
            return cred_provider
        if callable(getattr(cred_provider, "get_credentials", None)):
            return Oss2ProviderAdapter(cred_provider)
        raise CredentialsError(
            f"cred_provider of type {type(cred_provider).__name__} is not a credentials provider: pass an "
            "oss2 CredentialsProvider (with get_credentials()), an object with get() and invalidate(), "
            "or a Credentials"
        )
    if os.fspath(cred_path):
        file_provider = FileCredentialProvider(cred_path)
        file_provider.get()
        return file_provider
    env_provider = EnvironmentCredentialProvider()
    try:
        env_provider.get()
    except CredentialsError:
        if not any(os.environ.get(name) for name in (ENV_ACCESS_KEY_ID, ENV_ACCESS_KEY_SECRET)):
            raise CredentialsError(
                f"no credentials: neither cred_provider nor cred_path was given and {ENV_ACCESS_KEY_ID} / "
                f"{ENV_ACCESS_KEY_SECRET} are not set; {_HOW_TO_GIVE}"
            ) from None
        raise
    return env_provider
