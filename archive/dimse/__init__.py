"""The DIMSE services: the listener (one pynetdicom AE) and one module per service."""
