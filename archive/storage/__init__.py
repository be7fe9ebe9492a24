"""The storage area: opaque ids to bytes. The local directory (``local.py``) is the default."""
from archive.storage.local import CHUNK, StorageArea, copy_range, raise_for_os_error, spool

__all__ = ["CHUNK", "StorageArea", "copy_range", "raise_for_os_error", "spool"]
