"""ossmodelconnector: load AI models straight from Alibaba Cloud OSS.

Large weight files stream into POSIX shared memory with many concurrent ranged GETs while the framework
reads the model directory; every process on the node shares one copy.
"""

from __future__ import annotations

import logging

# First: modules below read the version while this package is still initializing.
from ossmodelconnector._version import __version__
from ossmodelconnector.connector import OssModelConnector
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
