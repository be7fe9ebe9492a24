"""slidearchive core: ingest, frame index, CLI; packages for catalog, storage, DIMSE, AI results, audit, auth."""
