"""What ``prepare_directory`` returns, whichever process owns the download: the :class:`ModelDirectory`.

Two classes satisfy it: :class:`~ossmodelconnector.directory.prepare.PreparedDirectory` (this process
fetches the files) and :class:`~ossmodelconnector.directory.attached.AttachedDirectory` (another live
process prepared the same URI into the same directory; reads here wait on its cache). Code that holds a
directory types against this protocol; ``isinstance(directory, ModelDirectory)`` works at run time.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ModelDirectory"]


@runtime_checkable
class ModelDirectory(Protocol):
    """A local model directory filled from an OSS prefix, while frameworks read it.

    Attributes:
        model_dir: the absolute directory.
        uri: the ``oss://bucket/prefix/`` it mirrors.
        placement: where the large files' bytes live: ``"shm"`` (``cacheDir``), ``"disk"`` (under
            ``model_dir/.ossmodelconnector/data``), or ``""`` when there are none.
    """

    model_dir: str
    uri: str
    placement: str

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        ...

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every large file is local and its CRC-64 verified.

        Args:
            timeout_s: give up after this many seconds without progress; ``waitTimeoutSeconds`` if None.

        Raises:
            RequestTimeoutError: no progress for ``timeout_s`` seconds.
            IntegrityError: a file's CRC-64 differs from the server's.
            OwnerDiedError: the process that owns the download died first (an attached directory).
            ConnectorError: a file's download failed.
            ClosedError: the directory was closed.
        """
        ...

    def stats(self) -> dict[str, Any]:
        """The directory's figures (``uri``, ``placement``, ``files``, ``bytes``, times, throughput,
        ``time_to_first_byte_s``...) and, under ``"states"``, :meth:`file_states`."""
        ...

    def file_states(self) -> dict[str, dict[str, Any]]:
        """Per file path: ``{"size", "state", "percent", ...}``, ``state`` one of ``"not fetched"``,
        ``"fetching"``, ``"cached"``, ``"evicted"``, ``"failed"``."""
        ...

    def close(self) -> None:
        """Release what this process holds of the directory; idempotent. The connector closes it too."""
        ...
