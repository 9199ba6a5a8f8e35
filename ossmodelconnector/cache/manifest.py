"""The manifest of a prepared directory: how a reader in another process finds the state table and data.

``<model_dir>/.ossmodelconnector/manifest.json`` (``docs/cache-layout.md``, section 4), written atomically
(a temporary file, then ``os.replace``), mode 0600. A reader that opened an entry of the directory finds
it by walking up from that entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ossmodelconnector.atomic_files import write_json_atomically
from ossmodelconnector.errors import CacheError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "OWN_DIR_NAME",
    "Manifest",
    "ManifestEntry",
    "find_manifest",
    "read_manifest",
    "write_manifest",
]

OWN_DIR_NAME = ".ossmodelconnector"
"""The folder inside a prepared directory that holds the manifest (and the disk fallback's data)."""
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ManifestEntry:
    """One large file of a prepared directory.

    Args:
        data_path: the data segment's file (what the directory entry links to).
        size: the object's size in bytes.
        etag: the object's ETag.
        index: its file index in the state table.
        bucket: the bucket it comes from.
        key: its key.
        last_modified: the object's ``Last-Modified`` (seconds since the epoch; 0 when unknown): the
            modification time the hooks of a reader in another process report for the file.
    """

    data_path: str
    size: int
    etag: str
    index: int
    bucket: str
    key: str
    last_modified: float = 0.0


@dataclass(frozen=True)
class Manifest:
    """The manifest's content.

    Args:
        state_table: the state table's segment name (in ``/dev/shm``).
        chunk_size: bytes per chunk.
        placement: ``"shm"`` or ``"disk"``.
        owner_pid: the owner's pid (the table has its start time too).
        files: relative path (``/``-separated) -> entry.
    """

    state_table: str
    chunk_size: int
    placement: str
    owner_pid: int
    files: Mapping[str, ManifestEntry]

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to disk."""
        return {
            "version": MANIFEST_VERSION,
            "state_table": self.state_table,
            "chunk_size": self.chunk_size,
            "placement": self.placement,
            "owner_pid": self.owner_pid,
            "files": {
                path: {
                    "data_path": entry.data_path,
                    "size": entry.size,
                    "etag": entry.etag,
                    "index": entry.index,
                    "bucket": entry.bucket,
                    "key": entry.key,
                    "last_modified": entry.last_modified,
                }
                for path, entry in self.files.items()
            },
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "manifest") -> Manifest:
        """Parse what :meth:`to_json` produced.

        Raises:
            CacheError: another version, or a field missing or of the wrong type.
        """
        try:
            if data["version"] != MANIFEST_VERSION:
                raise CacheError(
                    f"{source}: manifest version {data['version']}, this ossmodelconnector reads "
                    f"{MANIFEST_VERSION}: use the same version in every process"
                )
            files = {
                str(path): ManifestEntry(
                    data_path=str(entry["data_path"]),
                    size=int(entry["size"]),
                    etag=str(entry["etag"]),
                    index=int(entry["index"]),
                    bucket=str(entry["bucket"]),
                    key=str(entry["key"]),
                    # Optional: a manifest written before file times were kept has none.
                    last_modified=float(entry.get("last_modified", 0.0)),
                )
                for path, entry in data["files"].items()
            }
            return cls(
                state_table=str(data["state_table"]),
                chunk_size=int(data["chunk_size"]),
                placement=str(data["placement"]),
                owner_pid=int(data["owner_pid"]),
                files=files,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacheError(
                f"{source} is not a valid manifest ({exc!r}); prepare the directory again"
            ) from exc


def manifest_path(model_dir: str | os.PathLike[str]) -> Path:
    """``<model_dir>/.ossmodelconnector/manifest.json``."""
    return Path(model_dir) / OWN_DIR_NAME / MANIFEST_NAME


def write_manifest(model_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write the manifest atomically (readers see the old file or the whole new one), mode 0600.

    Returns:
        Its path.

    Raises:
        OSError: the directory is not writable.
    """
    path = manifest_path(model_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_json_atomically(path, manifest.to_json())
    return path


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest file.

    Raises:
        FileNotFoundError: no manifest there.
        CacheError: it is not a valid manifest.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CacheError(f"{path} is not valid JSON ({exc}); prepare the directory again") from exc
    return Manifest.from_json(data, str(path))


def find_manifest(entry: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """The manifest of the prepared directory holding ``entry``, and ``entry``'s path relative to it.

    Walks up from ``entry``'s directory (the path as given, made absolute, without resolving symlinks:
    the entries of a prepared directory are symlinks to their data) to the first directory with a
    ``.ossmodelconnector/manifest.json``.

    Returns:
        ``(manifest path, relative path with "/" separators)``, or None when no ancestor has one.
    """
    path = Path(os.path.abspath(entry))
    for parent in path.parents:
        candidate = parent / OWN_DIR_NAME / MANIFEST_NAME
        if candidate.is_file():
            return candidate, path.relative_to(parent).as_posix()
    return None
