"""What ``serve``'s children all run, imported once in the supervisor before it forks them.

The HTTP workers and the background process are forked from the supervisor. A module the
supervisor has imported is inherited page for page, shared until a process writes to it;
one each child imports itself is a private copy in every process. Importing pydicom, numpy,
Flask, pynetdicom, the app and the de-identification tables here, then freezing the garbage
collector (so its passes do not write to every inherited object and unshare its page), made
the idle server's proportional set size (PSS: a shared page counted once) 120 MB instead of
176, four processes (bench/memory.py, bench/FINDINGS.md). Summed RSS counts a shared page
in every process that maps it, so it does not fall (312 MB against 296): the supervisor's
own RSS grows by what it preloads.

Nothing is opened or started here (no catalog connection, file or thread of the archive):
each child builds its own Archive after the fork.
"""
from __future__ import annotations

import gc
import importlib

#: Modules the HTTP workers (dicomweb.wsgi) and the background process (archive.background)
#: import at start. One missing here still works, unshared; one that cannot be imported is
#: skipped, as dicomweb.create_app skips an optional blueprint.
MODULES = (
    "dicomweb.wsgi", "dicomweb", "dicomweb.auth", "dicomweb.drain", "dicomweb.fastframes", "dicomweb.health",
    "dicomweb.metrics", "dicomweb.qido", "dicomweb.stow", "dicomweb.wado", "dicomweb.results",
    "indexer.api", "importer.api", "datasets.api", "datasets.access_api", "datasets.download_api", "web",
    "archive.service", "archive.background", "archive.audit.syslog", "archive.dimse.listener", "indexer.worker",
    "deid.core", "deid.iod", "deid.vault",
)


def preload() -> None:
    """Import MODULES and load the tables the first ingest needs (Ingest.warm_up), then freeze the collector.

    The whole-slide IOD table and the rule table are loaded whether or not a de-identification policy is on
    (the default profile is): 4 MB, shared."""
    from archive.logs import quiet_libraries

    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional package (or what it needs) absent: the app skips it alike
            continue
    quiet_libraries()
    from archive.ingest import storage_sop_classes
    from archive.results.slide_levels import WSI_CLASS
    from deid.iod import iod_types
    from deid.table import load_table

    storage_sop_classes()
    iod_types(WSI_CLASS)
    load_table()
    gc.freeze()
