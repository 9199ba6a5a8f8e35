"""``localoss``: a local OSS-compatible HTTP server over a folder, for tests, the demo and benchmarks.

Run it as ``python -m ossmodelconnector.localoss --root DIR --port 0`` (it prints its endpoint), or in
process with :class:`LocalOssServer`. It speaks the OSS REST API (and its S3 dialect) well enough for
oss2, boto3 and the connector: GetObject with ranges and conditions, HeadObject, GetObjectMeta, PutObject,
DeleteObject, ListObjects V1/V2, buckets; OSS V1/V4 and AWS SigV4 signatures are checked. Modules:

- ``server``: sockets, connections, addressing, auth; ``protocol``: HTTP/1.1 messages;
- ``operations``: the OSS operations; ``store``: the folder and metadata; ``keyindex``: listings;
- ``faults``: fault injection and throttling; ``xmlbody``: error and listing XML; ``auth``: signatures.
"""

from __future__ import annotations

from ossmodelconnector.localoss.faults import FaultConfig
from ossmodelconnector.localoss.server import LocalOssServer, ServerConfig

__all__ = ["FaultConfig", "LocalOssServer", "ServerConfig"]
