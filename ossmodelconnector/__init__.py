"""ossmodelconnector: load AI models straight from Alibaba Cloud OSS.

Large weight files stream into POSIX shared memory with many concurrent ranged GETs while the framework
reads the model directory; every process on the node shares one copy.
"""

from __future__ import annotations

import logging
import typing

from ossmodelconnector._version import __version__
from ossmodelconnector.errors import (
    AccessDeniedError,
    CacheError,
    ClosedError,
    ConfigError,
    ConnectorError,
    CredentialsError,
    IntegrityError,
    InvalidURIError,
    ObjectChangedError,
    ObjectNotFoundError,
    OutOfMemoryError,
    OwnerDiedError,
    RequestError,
    RequestTimeoutError,
    RetriesExhaustedError,
    UnsafePathError,
)

__all__ = [
    "AccessDeniedError",
    "CacheError",
    "ClosedError",
    "ConfigError",
    "ConnectorError",
    "CredentialsError",
    "IntegrityError",
    "InvalidURIError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "OssModelConnector",
    "OutOfMemoryError",
    "OwnerDiedError",
    "RequestError",
    "RequestTimeoutError",
    "RetriesExhaustedError",
    "UnsafePathError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

if typing.TYPE_CHECKING:
    from ossmodelconnector.connector import OssModelConnector
else:

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))

    def __getattr__(name: str) -> typing.Any:
        # The connector pulls in oss2 and the HTTP client (~0.4 s). Imported on first use, so that a
        # process the start-up entry point only makes a reader (a vLLM worker) starts without that cost.
        if name == "OssModelConnector":
            from ossmodelconnector.connector import OssModelConnector

            globals()[name] = OssModelConnector
            return OssModelConnector
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
