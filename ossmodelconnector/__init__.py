"""ossmodelconnector: load AI models straight from Alibaba Cloud OSS.

Large weight files stream into POSIX shared memory with many concurrent ranged GETs while the framework
reads the model directory; every process on the node shares one copy.
"""

from __future__ import annotations

import importlib
import logging
import typing

from ossmodelconnector._version import __version__
from ossmodelconnector.config import Config
from ossmodelconnector.directory.model_directory import ModelDirectory
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
from ossmodelconnector.objects import ObjectInfo

__all__ = [
    "AccessDeniedError",
    "CacheError",
    "ClosedError",
    "Config",
    "ConfigError",
    "ConnectorError",
    "CredentialsError",
    "IntegrityError",
    "InvalidURIError",
    "ModelDirectory",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "OssModelConnector",
    "OssStream",
    "OutOfMemoryError",
    "OwnerDiedError",
    "RequestError",
    "RequestTimeoutError",
    "RetriesExhaustedError",
    "UnsafePathError",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

# The connector pulls in oss2 and the HTTP client (~0.4 s), the stream the prefetch scheduler: imported on
# first use, so that a process the start-up entry point only makes a reader (a vLLM worker) starts
# without that cost.
_LAZY = {"OssModelConnector": "ossmodelconnector.connector", "OssStream": "ossmodelconnector.fetch.stream"}

if typing.TYPE_CHECKING:
    from ossmodelconnector.connector import OssModelConnector
    from ossmodelconnector.fetch.stream import OssStream
else:

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))

    def __getattr__(name: str) -> typing.Any:
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
