"""slidearchive core: storage, catalog, frame index, ingest, DIMSE, CLI."""
