"""Build the configured backend and the indexer's own state from the ``[index]`` table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Index
from .config import IndexConfig, IndexConfigError, load_index_config


def open_index(config: IndexConfig) -> Index:
    if config.backend == "elasticsearch":
        from .elastic import ElasticIndex

        return ElasticIndex(config)
    if config.path is None:
        raise IndexConfigError("[index] the embedded backend needs path (or the archive's data_dir)")
    from .embedded import EmbeddedIndex

    return EmbeddedIndex(config.path)


def from_settings(index_table: dict[str, Any] | None, data_dir: Path | None) -> tuple[IndexConfig, Index]:
    """What archive code calls with ``settings.index`` and ``settings.data_dir``."""
    config = load_index_config(index_table, data_dir)
    return config, open_index(config)
