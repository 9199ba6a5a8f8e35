"""What a credential may hold, and the :class:`Credentials` value: checked where a value enters.

OSS access key ids, secrets and STS tokens are printable ASCII without spaces; the id and the token
travel in HTTP headers, where ``http.client`` refuses a control character with a message that quotes the
value. So every value is checked where it enters (``credentials.py``'s providers, or ``Credentials(...)``
itself): whitespace around it is removed with a WARNING naming the source and the field, any other
character outside printable ASCII is refused with a :class:`CredentialsError` naming the source and the
field, never the value. ``repr`` shows the access key id only.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

from ossmodelconnector.errors import CredentialsError

__all__ = ["REDACTED", "Credentials", "bad_character", "clean_value", "refused_value"]

log = logging.getLogger(__name__)

REDACTED = "***"
"""What a redacted secret shows in a ``repr`` or a message."""

# OSS access key ids, secrets and STS tokens are printable ASCII without spaces (base64 and "STS."); the
# id and the token are sent as HTTP header values, where a control character is refused outright.
_PRINTABLE_RE = re.compile(r"[\x21-\x7e]*\Z")
# What a file or a secret mount leaves around a value: removed (with a WARNING), not refused.
_SURROUNDING = " \t\r\n"
_CHARACTER_NAMES = {
    "\n": "a line feed (U+000A)",
    "\r": "a carriage return (U+000D)",
    "\t": "a tab (U+0009)",
    "\0": "a NUL (U+0000)",
    " ": "a space",
}


def bad_character(value: str) -> str | None:
    """What the first character that cannot be in a credential is, in words (never the character itself
    unless it is a control character), or None."""
    if _PRINTABLE_RE.match(value):
        return None
    char = next(c for c in value if not "\x21" <= c <= "\x7e")
    if char in _CHARACTER_NAMES:
        return _CHARACTER_NAMES[char]
    if char < " " or char == "\x7f":
        return f"a control character (U+{ord(char):04X})"
    return "a non-ASCII character"


def refused_value(source: str, field: str, problem: str, fix: str) -> CredentialsError:
    return CredentialsError(
        f"{source}: {field} contains {problem}, and OSS credentials are printable ASCII without spaces; "
        f"the value was refused before any request was sent (this is not a server problem). Fix: {fix}"
    )


def clean_value(value: str, source: str, field: str, warned: set[str]) -> str:
    """``value`` without surrounding whitespace (a WARNING the first time), or a refusal.

    Args:
        value: the value as read.
        source: where it was read (``environment``, ``credentials file '/path'``), for messages.
        field: the field's name at that source, for messages.
        warned: the fields of this source already warned about; the field is added to it.

    Raises:
        CredentialsError: a character other than surrounding whitespace is not printable ASCII.
    """
    stripped = value.strip(_SURROUNDING)
    if stripped != value and stripped:
        if field in warned:
            log.debug("%s: removed the whitespace around %s again", source, field)
        else:
            warned.add(field)
            log.warning(
                "%s: %s had whitespace around it (such as the trailing newline of a file or a Kubernetes "
                "secret); it was removed. Store the value without it to silence this warning",
                source,
                field,
            )
    problem = bad_character(stripped)
    if problem:
        raise refused_value(
            source, field, problem, "store the value exactly as Alibaba Cloud issued it (printable ASCII)"
        )
    return stripped


@dataclass(frozen=True)
class Credentials:
    """An access key, with the STS token and its expiry when it is temporary.

    ``repr`` and ``str`` show the access key id only; the secret and the token are redacted.

    Args:
        access_key_id: the AccessKeyId (not secret: it is sent in every Authorization header).
        access_key_secret: the AccessKeySecret.
        security_token: the STS SecurityToken, or None for a permanent key ("" counts as None).
        expires_at: when an STS token expires, in epoch seconds, or None if unknown/never.

    Raises:
        CredentialsError: a field is empty, has the wrong type, or holds a character that is not printable
            ASCII, such as a trailing newline (the field is named, never its value).
    """

    access_key_id: str
    access_key_secret: str
    security_token: str | None = None
    expires_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("access_key_id", "access_key_secret"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise CredentialsError(
                    f"credentials field {name} is {'empty' if value == '' else 'not a string'}: "
                    "it must be a non-empty string"
                )
        if self.security_token == "":
            object.__setattr__(self, "security_token", None)  # oss2 uses "" for "no token"
        elif self.security_token is not None and not isinstance(self.security_token, str):
            raise CredentialsError("credentials field security_token is not a string or None")
        for name in ("access_key_id", "access_key_secret", "security_token"):
            value = getattr(self, name)
            problem = None if value is None else bad_character(value)
            if problem:
                # The providers of this module clean what they read first; this is a caller's own value.
                raise refused_value(
                    "Credentials(...)",
                    name,
                    problem,
                    "strip it where the value is read (e.g. value.strip() for a trailing newline)",
                )
        if self.expires_at is not None:
            if isinstance(self.expires_at, bool) or not isinstance(self.expires_at, (int, float)):
                raise CredentialsError("credentials field expires_at is not a number of epoch seconds")
            try:
                expires_at = float(self.expires_at)
            except OverflowError:  # an int past 1.8e308
                expires_at = math.inf
            if not math.isfinite(expires_at):
                raise CredentialsError("credentials field expires_at is not finite")
            object.__setattr__(self, "expires_at", expires_at)

    def __repr__(self) -> str:
        token = None if self.security_token is None else REDACTED
        return (
            f"Credentials(access_key_id={self.access_key_id!r}, access_key_secret={REDACTED!r}, "
            f"security_token={token!r}, expires_at={self.expires_at!r})"
        )

    __str__ = __repr__

    def expires_within(self, seconds: float, now: float | None = None) -> bool:
        """Whether the credentials expire (or have expired) within ``seconds`` from ``now``.

        Args:
            seconds: the margin.
            now: epoch seconds; ``time.time()`` when None.

        Returns:
            False for credentials without an expiry.
        """
        if self.expires_at is None:
            return False
        return self.expires_at - (time.time() if now is None else now) <= seconds
