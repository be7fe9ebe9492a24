"""The storage area: opaque ids to bytes. The local directory (``local.py``) is the default;
``[storage] url = "s3://bucket/prefix"`` selects the S3 backend (``s3.py``).

Both offer: ``new_temp`` (a local spool path), ``commit`` (temp -> new id, atomically),
``remove``, ``read_range`` (a frame), ``open`` (a seekable read-only file), ``size``,
``local_copy`` (a path, for senders that need one), ``objects`` (id -> size, for verify),
``remove_orphans``, ``check`` (reachable?) and ``sweep_temp``.
"""
from __future__ import annotations

import hashlib

from archive.storage.local import CHUNK, StorageArea, copy_range, raise_for_os_error, spool

__all__ = ["CHUNK", "StorageArea", "copy_range", "open_storage", "raise_for_os_error", "spool", "stored_sha256"]


def open_storage(settings) -> "StorageArea":
    """The backend ``[storage] url`` names: the data directory's storage/ (default) or an S3 bucket."""
    if settings.storage.is_s3:
        from archive.storage.s3 import S3Storage

        return S3Storage(settings.storage, settings.storage_dir / "tmp")
    return StorageArea(settings.storage_dir)


def stored_sha256(storage, storage_id: str) -> str:
    """SHA-256 of a stored instance, read in chunks (``verify --checksums``, re-sends of a rotted copy)."""
    h = hashlib.sha256()
    with storage.open(storage_id) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
