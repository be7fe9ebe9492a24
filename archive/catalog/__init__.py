"""The catalog: what the archive holds, by study, series and instance, and who may see it.

The SQLite backend (``sqlite.py``) is the embedded default; ``query.py`` is the query model
QIDO-RS and C-FIND share, ``attributes.py`` which attributes live at which level.
"""
from archive.catalog.sqlite import Catalog, InstanceRecord, NewInstance, column_value, scope

__all__ = ["Catalog", "InstanceRecord", "NewInstance", "column_value", "scope"]
