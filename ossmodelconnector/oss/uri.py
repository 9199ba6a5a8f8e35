"""``oss://bucket/key`` URIs and OSS endpoints: what to ask for, and where to send it.

An :class:`OssUri` names an object (or, with an empty key or one ending in ``/``, a prefix); its key is
taken literally, never percent-decoded. An :class:`Endpoint` is the server: it knows whether requests
use path style (``/bucket/key`` on an IP or ``localhost``, as oss2 does) or virtual-hosted style
(``Host: bucket.endpoint``, path ``/key``), its region when the host name tells it, and how to encode a
key on the request line exactly as oss2 does, so that what the server decodes is what was signed.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ossmodelconnector.errors import ConfigError, InvalidURIError

__all__ = [
    "DEFAULT_SCHEME",
    "MAX_KEY_BYTES",
    "Endpoint",
    "OssUri",
    "is_valid_bucket_name",
    "parse_endpoint",
    "parse_oss_uri",
    "parse_prefix_uri",
    "region_from_host",
]

log = logging.getLogger(__name__)

SCHEME = "oss://"
DEFAULT_SCHEME = "http"  # what the reference product and oss2 assume for a bare host name
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_KEY_BYTES = 1023  # OSS object names are 1..1023 bytes of UTF-8

_BUCKET_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]\Z")
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
_ALIYUN_SUFFIX = ".aliyuncs.com"
# oss-<region>.aliyuncs.com (public) and oss-<region>-internal.aliyuncs.com (VPC)
_ALIYUN_REGIONAL = re.compile(r"oss-([a-z0-9]+(?:-[a-z0-9]+)*?)(?:-internal)?\Z")
# <region>.oss.aliyuncs.com (dual-stack)
_ALIYUN_DUALSTACK = re.compile(r"([a-z0-9]+(?:-[a-z0-9]+)*)\.oss\Z")
# <bucket>.oss-<region>[-internal].aliyuncs.com: a bucket's own domain, not an endpoint
_ALIYUN_BUCKET_DOMAIN = re.compile(r"([a-z0-9-]+)\.(oss-[a-z0-9-]+)\Z")
# Global endpoints that route to any region: no region can be derived from them.
_ALIYUN_REGIONLESS = frozenset({"oss", "oss-internal", "oss-accelerate", "oss-accelerate-overseas"})

_URI_HELP = (
    "expected oss://bucket/key (bucket: 3-63 lower-case letters, digits and hyphens, starting and ending "
    "with a letter or digit; key: any UTF-8 text, taken literally)"
)


def is_valid_bucket_name(name: str) -> bool:
    """Whether ``name`` follows the OSS bucket naming rules.

    Args:
        name: a candidate bucket name.

    Returns:
        True for 3-63 lower-case letters, digits and hyphens that start and end with a letter or digit.
    """
    return isinstance(name, str) and _BUCKET_RE.match(name) is not None


def _key_problem(key: str) -> str | None:
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the key is not valid UTF-8 (it holds a lone surrogate)"
    if size > MAX_KEY_BYTES:
        return f"the key is {size} bytes of UTF-8, more than the {MAX_KEY_BYTES} OSS accepts"
    if key[:1] in ("/", "\\"):
        return f"the key starts with {key[0]!r}, which OSS refuses (one slash too many after the bucket?)"
    return None


@dataclass(frozen=True)
class OssUri:
    """An object (or prefix) in a bucket: ``oss://bucket/key``.

    Args:
        bucket: the bucket name (OSS rules).
        key: the object key, literally (``""`` for the whole bucket, ``dir/`` for a prefix).

    Raises:
        InvalidURIError: bad bucket name, or a key OSS would refuse.
    """

    bucket: str
    key: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise InvalidURIError(f"OssUri key must be a string, not {type(self.key).__name__}; {_URI_HELP}")
        if not is_valid_bucket_name(self.bucket):
            raise InvalidURIError(
                f"{self.bucket!r} is not a valid bucket name; {_URI_HELP}", bucket=str(self.bucket)
            )
        problem = _key_problem(self.key)
        if problem:
            raise InvalidURIError(
                f"oss://{self.bucket}/{self.key!r}: {problem}; {_URI_HELP}", bucket=self.bucket
            )

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def parse_oss_uri(uri: str) -> OssUri:
    """Split ``oss://bucket/key`` into bucket and key.

    The key is everything after the first ``/`` that follows the bucket, literally: ``%20`` stays
    ``%20``, ``?`` and ``#`` are part of it. ``oss://bucket`` and ``oss://bucket/`` name the whole
    bucket. The scheme is matched case-insensitively.

    Args:
        uri: the URI.

    Returns:
        The parsed :class:`OssUri`; ``str()`` of it gives the URI back (with a ``/`` after a bare bucket).

    Raises:
        InvalidURIError: another scheme, no bucket, a bad bucket name or a key OSS would refuse; the
            message names the URI and the expected form.

    Example:
        >>> parse_oss_uri("oss://models/llama/model.safetensors")
        OssUri(bucket='models', key='llama/model.safetensors')
    """
    if not isinstance(uri, str):
        raise InvalidURIError(f"{uri!r} is a {type(uri).__name__}, not a string; {_URI_HELP}")
    if uri[: len(SCHEME)].lower() != SCHEME:
        scheme, sep, _ = uri.partition("://")
        if sep and scheme:
            why = f"its scheme is {scheme!r}, not 'oss'"
        elif uri.lower().startswith("oss:"):
            why = "'oss:' must be followed by '//'"
        else:
            why = "it does not start with 'oss://'"
        raise InvalidURIError(f"{uri!r} is not an OSS URI: {why}; {_URI_HELP}")
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if not bucket:
        raise InvalidURIError(f"{uri!r} is not an OSS URI: the bucket is missing; {_URI_HELP}")
    if not is_valid_bucket_name(bucket):
        raise InvalidURIError(
            f"{uri!r} is not an OSS URI: {bucket!r} is not a valid bucket name; {_URI_HELP}", bucket=bucket
        )
    problem = _key_problem(key)
    if problem:
        raise InvalidURIError(f"{uri!r} is not an OSS URI: {problem}; {_URI_HELP}", bucket=bucket)
    return OssUri(bucket, key)


def parse_prefix_uri(oss_dir: str) -> tuple[str, str]:
    """Split ``oss://bucket/prefix/`` into the bucket and a prefix that is "" or ends in ``/``.

    Args:
        oss_dir: the URI; a prefix without its final ``/`` gets one (logged at DEBUG).

    Returns:
        ``(bucket, prefix)``.

    Raises:
        InvalidURIError: not an ``oss://`` URI, or a bad bucket name or key.
    """
    parsed = parse_oss_uri(oss_dir)
    prefix = parsed.key
    if prefix and not prefix.endswith("/"):
        log.debug("%s: a directory prefix ends in '/'; using %r", oss_dir, prefix + "/")
        prefix += "/"
    if "//" in prefix or prefix.startswith("/"):
        raise InvalidURIError(
            f"{oss_dir!r}: the prefix {prefix!r} has an empty folder name; write oss://bucket/folder/",
            bucket=parsed.bucket,
        )
    return parsed.bucket, prefix


def region_from_host(host: str) -> str | None:
    """The region an Alibaba Cloud OSS host name belongs to, if it tells.

    Args:
        host: ``oss-cn-hangzhou.aliyuncs.com``, ``oss-cn-hangzhou-internal.aliyuncs.com`` or the
            dual-stack ``cn-hangzhou.oss.aliyuncs.com`` give ``cn-hangzhou``; global endpoints
            (``oss-accelerate.aliyuncs.com``, ``oss.aliyuncs.com``) and other hosts give None.

    Returns:
        The region id, or None.
    """
    host = host.lower().rstrip(".")
    if not host.endswith(_ALIYUN_SUFFIX):
        return None
    label = host[: -len(_ALIYUN_SUFFIX)]
    if label in _ALIYUN_REGIONLESS:
        return None
    for pattern in (_ALIYUN_REGIONAL, _ALIYUN_DUALSTACK):
        match = pattern.match(label)
        if match:
            return match.group(1)
    return None


@dataclass(frozen=True)
class Endpoint:
    """Where requests go, and how a bucket and key become a Host header and a request path.

    Args:
        scheme: ``http`` or ``https``.
        host: lower-case host name or IP address (IPv6 without brackets).
        port: TCP port (80/443 when the endpoint gave none).
        path_style: True for ``/bucket/key`` paths (IP or ``localhost`` endpoints), False for
            virtual-hosted ``Host: bucket.host`` with ``/key`` paths.
        region: the region id (given, or derived from an Alibaba Cloud host name), None if unknown.
    """

    scheme: str
    host: str
    port: int
    path_style: bool
    region: str | None = None

    @property
    def netloc(self) -> str:
        """``host[:port]`` as written in a URL or Host header; the port only when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def host_for(self, bucket: str) -> str:
        """The Host header of a request to ``bucket``.

        Args:
            bucket: the bucket name; "" for a service-level request.

        Returns:
            ``host[:port]`` in path style, ``bucket.host[:port]`` in virtual-hosted style.

        Raises:
            InvalidURIError: the bucket name is not valid.
        """
        if self.path_style or not bucket:
            return self.netloc
        _check_bucket(bucket)
        return f"{bucket}.{self.netloc}"

    def path_for(self, bucket: str, key: str = "") -> str:
        """The percent-encoded request path (no query) of ``key`` in ``bucket``, as oss2 sends it.

        Every byte of the UTF-8 key except letters, digits and ``-._~`` is percent-encoded, ``/``
        included (oss2's ``urlquote(key, safe="")``; OSS decodes ``%2F`` back to ``/`` and signs the
        decoded key).

        Args:
            bucket: the bucket name; "" for a service-level request.
            key: the object key, literally; "" for a bucket-level request (listing).

        Returns:
            ``/bucket/<encoded key>`` in path style, ``/<encoded key>`` in virtual-hosted style.

        Raises:
            InvalidURIError: the bucket name is not valid or the key is not encodable as UTF-8.
        """
        try:
            encoded = quote(key, safe="")
        except UnicodeEncodeError:
            raise InvalidURIError(
                "key is not valid UTF-8 (it holds a lone surrogate); pass the key as text decoded from UTF-8",
                bucket=bucket,
            ) from None
        if not bucket:
            return "/" + encoded
        _check_bucket(bucket)
        return f"/{bucket}/{encoded}" if self.path_style else f"/{encoded}"

    def url_for(self, bucket: str, key: str = "") -> str:
        """The full URL (no query) of ``key`` in ``bucket``, as oss2 builds it.

        Args:
            bucket: the bucket name.
            key: the object key, literally.

        Returns:
            ``scheme://host_for(bucket)path_for(bucket, key)``.

        Raises:
            InvalidURIError: as :meth:`path_for`.
        """
        return f"{self.scheme}://{self.host_for(bucket)}{self.path_for(bucket, key)}"


def _check_bucket(bucket: str) -> None:
    if not is_valid_bucket_name(bucket):
        raise InvalidURIError(f"{bucket!r} is not a valid bucket name; {_URI_HELP}", bucket=str(bucket))


def _endpoint_error(endpoint: object, why: str) -> ConfigError:
    return ConfigError(
        f"endpoint {endpoint!r} is not usable: {why}; expected a host such as "
        "oss-cn-beijing-internal.aliyuncs.com, https://oss-cn-hangzhou.aliyuncs.com or http://127.0.0.1:9000"
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_host(endpoint: str, host: str) -> None:
    if _is_ip(host):
        return
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise _endpoint_error(endpoint, f"{host!r} is not a host name or IP address")
    if labels[-1].isdigit():
        raise _endpoint_error(endpoint, f"{host!r} is not a valid IP address")


def parse_endpoint(endpoint: str, region: str = "", *, path_style: bool | None = None) -> Endpoint:
    """Parse the OSS endpoint the connector talks to.

    Args:
        endpoint: ``oss-cn-beijing-internal.aliyuncs.com`` (the scheme defaults to http, as in the
            reference product), ``https://oss-cn-hangzhou.aliyuncs.com``, ``http://127.0.0.1:9000`` or
            ``localhost:9000``; surrounding white space and one trailing ``/`` are ignored.
        region: the region id to sign V4 requests for; "" derives it from an Alibaba Cloud host name.
        path_style: force the addressing style; None chooses path style for an IP address or
            ``localhost`` (as oss2 does) and virtual-hosted style for a domain.

    Returns:
        The :class:`Endpoint`.

    Raises:
        ConfigError: empty, contains spaces, a path, a query, user info, a scheme other than
            http/https (``oss://...`` is a URI, not an endpoint), a bad port, a bad host, a bucket's
            own domain, or a malformed ``region``; the message names the endpoint.

    Example:
        >>> parse_endpoint("oss-cn-hangzhou-internal.aliyuncs.com").region
        'cn-hangzhou'
    """
    if not isinstance(endpoint, str):
        raise _endpoint_error(endpoint, f"it is a {type(endpoint).__name__}, not a string")
    text = endpoint.strip()
    if not text:
        raise _endpoint_error(endpoint, "it is empty")
    if any(ch.isspace() for ch in text) or any(ord(ch) < 32 for ch in text):
        raise _endpoint_error(endpoint, "it contains white space or control characters")
    if "://" not in text:
        text = f"{DEFAULT_SCHEME}://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _endpoint_error(endpoint, f"it does not parse ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        hint = " (an oss:// URI names an object, the endpoint names the server)" if scheme == "oss" else ""
        raise _endpoint_error(endpoint, f"its scheme {parts.scheme!r} is not http or https{hint}")
    if parts.path not in ("", "/"):
        raise _endpoint_error(
            endpoint, f"it has a path {parts.path!r} (put the bucket and key in an oss:// URI)"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise _endpoint_error(endpoint, "it has a query or fragment")
    if "@" in parts.netloc:
        raise _endpoint_error(
            endpoint, "it has user info (give credentials through cred_provider or cred_path)"
        )
    host = (parts.hostname or "").lower()
    if not host:
        raise _endpoint_error(endpoint, "the host is missing")
    if parts.netloc.endswith(":"):
        raise _endpoint_error(endpoint, "the port after ':' is missing")
    if port == 0:
        raise _endpoint_error(endpoint, "port 0 is not a port a server listens on")
    if "[" in parts.netloc and not _is_ip(host):
        raise _endpoint_error(endpoint, f"{host!r} in brackets is not an IPv6 address")
    _check_host(endpoint, host)
    label = host[: -len(_ALIYUN_SUFFIX)] if host.endswith(_ALIYUN_SUFFIX) else ""
    bucket_domain = _ALIYUN_BUCKET_DOMAIN.match(label)
    if bucket_domain:
        raise _endpoint_error(
            endpoint,
            f"it is the domain of bucket {bucket_domain.group(1)!r}, not an endpoint: use "
            f"{bucket_domain.group(2)}{_ALIYUN_SUFFIX} and put the bucket in the oss:// URI",
        )
    if region and not _REGION_RE.match(region):
        raise ConfigError(
            f"region {region!r} for endpoint {endpoint!r} is not a region id: use lower-case letters, digits "
            "and hyphens, such as 'cn-hangzhou'"
        )
    is_local = _is_ip(host) or host == "localhost"
    return Endpoint(
        scheme=scheme,
        host=host,
        port=DEFAULT_PORTS[scheme] if port is None else port,
        path_style=is_local if path_style is None else path_style,
        region=region or region_from_host(host),
    )
