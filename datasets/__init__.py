"""Datasets: curated, versioned, citable sets of slide series (docs/datasets.md).

A dataset names its series by a saved search, a collection and/or a list; a
release freezes it into an immutable manifest (every SOP Instance UID with its
size and SHA-256), a version, a persistent identifier and landing-page counts,
and records its studies in the collection ``dataset:<id>:v<version>`` that
grants (``datasets.access``) authorize. The rows live in the catalog's database.
"""
