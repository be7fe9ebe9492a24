"""Vendor slide import (issue 13): Aperio SVS, Hamamatsu NDPI, Philips TIFF and OpenSlide's formats.

formats (what a file is) -> manifest (sidecar metadata, checked first) -> convert
(wsidicomizer into temporary Part 10 files; vendor text scrubbed) -> run (each file
stored through ``Archive.store_file``, the one ingest path; a ledger makes re-runs skip
and crashes undo) -> batch (the CLI's per-file bars and summary). docs/import.md.
"""
