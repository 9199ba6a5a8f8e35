"""Request signing for OSS, delegated to oss2's own V1 and V4 signers.

::

    (method, bucket, key, params, headers) + Credentials
        -> oss2.http.Request -> oss2 ProviderAuth / ProviderAuthV4 ._sign_request
        -> headers to send: the caller's, plus Date or x-oss-date, x-oss-content-sha256 (V4),
           x-oss-security-token (STS) and Authorization

Reusing oss2 keeps the string-to-sign rules (sub-resources, canonical headers, V4 URI encoding) exactly
what the SDK, and therefore OSS, expects; ``tests/unit/oss/test_signing.py`` pins that our headers are
byte-identical to the ones an ``oss2.Bucket`` sends for the same request.

oss2 logs its string-to-sign at DEBUG, and that string contains the STS security token. A filter on the
``oss2.auth`` logger, installed on import, masks the token so a DEBUG log never carries a secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import oss2
import oss2.auth
import oss2.credentials
import oss2.http

from ossmodelconnector.errors import ConfigError

if TYPE_CHECKING:
    from ossmodelconnector.oss.credentials import Credentials

__all__ = [
    "DEFAULT_PRODUCT",
    "SIGNATURE_VERSIONS",
    "Signer",
]

log = logging.getLogger(__name__)

DEFAULT_PRODUCT = "oss"
"""The V4 scope's product name (``<date>/<region>/oss/aliyun_v4_request``)."""

SIGNATURE_VERSIONS = ("v1", "v4")

# Headers oss2.http.Request adds for the requests library; they are not signed and we do not send them.
_TRANSPORT_ONLY_HEADERS = frozenset({"user-agent", "accept-encoding"})

_TOKEN_PATTERN = re.compile(r"(security-token[:=])[^\n&\s]*", re.IGNORECASE)


class _MaskSecurityToken(logging.Filter):
    """Masks STS tokens in oss2's DEBUG string-to-sign records (the access key secret never appears)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "security-token" in message.lower():
            record.msg = _TOKEN_PATTERN.sub(r"\1******", message)
            record.args = ()
        return True


def _install_log_mask() -> None:
    oss2_auth_log = logging.getLogger(oss2.auth.__name__)
    if not any(isinstance(existing, _MaskSecurityToken) for existing in oss2_auth_log.filters):
        oss2_auth_log.addFilter(_MaskSecurityToken())


_install_log_mask()


@dataclass(frozen=True)
class Signer:
    """Signs OSS requests with oss2's V1 or V4 algorithm.

    Args:
        version: ``"v1"`` or ``"v4"`` (``Config.resolve_signature_version`` picks it).
        region: the region in the V4 scope (``cn-hangzhou``); ignored by V1.

    Raises:
        ConfigError: an unknown version, or V4 without a region (its signing scope names one).

    Example:
        >>> signer = Signer("v1")
        >>> headers = signer.sign("GET", "bucket", "dir/a b.bin", {}, {"Range": "bytes=0-9"}, creds)
        >>> headers["Authorization"].startswith("OSS ")
        True
    """

    version: str
    region: str = ""

    def __post_init__(self) -> None:
        if self.version not in SIGNATURE_VERSIONS:
            raise ConfigError(
                f"signature version {self.version!r} is not supported: use 'v1' or 'v4' "
                "(signatureVersion in the config; leave it empty to pick V4 when a region is known)"
            )
        if self.version == "v4" and not self.region:
            raise ConfigError(
                "signature version 'v4' needs a region (its signing scope names it): set 'region' in the "
                "config (for example 'cn-hangzhou'), use an endpoint that names it, or use 'v1'"
            )

    def sign(
        self,
        method: str,
        bucket: str,
        key: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        credentials: Credentials,
    ) -> dict[str, str]:
        """Return the headers to send for this request, signed.

        Args:
            method: the HTTP method (``GET``, ``HEAD``...).
            bucket: the bucket name.
            key: the object key, unencoded (``""`` for a bucket-level request such as a listing).
            params: the query parameters exactly as they will be sent (values unencoded).
            headers: the request's own headers (``Range``, ``If-Match``, ``x-oss-*``...).
            credentials: the access key, secret and optional STS token to sign with.

        Returns:
            A new dict: ``headers`` plus the date header, the security token (STS), V4's
            ``x-oss-content-sha256`` and ``Authorization``.
        """
        provider = oss2.credentials.StaticCredentialsProvider(
            credentials.access_key_id, credentials.access_key_secret, credentials.security_token or ""
        )
        request = oss2.http.Request(
            method,
            "",
            params=dict(params),
            headers=dict(headers),
            region=self.region or None,
            product=DEFAULT_PRODUCT,
        )
        auth: oss2.auth.AuthBase
        auth = (
            oss2.auth.ProviderAuthV4(provider) if self.version == "v4" else oss2.auth.ProviderAuth(provider)
        )
        auth._sign_request(request, bucket, key)
        return {
            name: value
            for name, value in request.headers.items()
            if value is not None and name.lower() not in _TRANSPORT_ONLY_HEADERS
        }
