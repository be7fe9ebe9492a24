"""The catalog: what the archive holds, by study, series and instance, and who may see it.

``core.py`` holds the catalog's operations, in SQL both backends run: the SQLite file
(``sqlite.py``, the embedded default) and PostgreSQL (``postgresql.py``, a catalog several
nodes share), behind ``database.py``'s interface; ``schema.py`` is the numbered schema
migrations of both, ``work.py`` the leased work items and leases nodes share. ``query.py``
is the query model QIDO-RS and C-FIND share, ``attributes.py`` which attributes live at
which level.
"""
from archive.catalog.core import UNRESTRICTED, Catalog, InstanceRecord, NewInstance, column_value, scope

__all__ = ["Catalog", "InstanceRecord", "NewInstance", "UNRESTRICTED", "column_value", "scope"]
