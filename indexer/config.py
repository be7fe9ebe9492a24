"""The ``[index]`` TOML table, validated here because the indexer owns it.

Secrets never sit in the file: ``username_env``/``password_env``/``api_key_env``
name environment variables that hold them.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


class IndexConfigError(ValueError):
    """An ``[index]`` setting that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    backend: str = "embedded"  # embedded | elasticsearch
    urls: tuple[str, ...] = ()
    username_env: str | None = None
    password_env: str | None = None
    api_key_env: str | None = None
    index_prefix: str = "slidearchive-"
    path: Path | None = None  # embedded index file / indexer state; default: <data_dir>/index.sqlite
    request_timeout: float = 10.0
    shards: int = 1
    replicas: int = 0
    batch_size: int = 500
    poll_interval: float = 1.0
    qido: bool = False  # answer study/series QIDO from the index
    ca_certs: str | None = None

    def credentials(self) -> dict[str, Any]:
        """Keyword arguments for the Elasticsearch client, read from the named variables."""
        out: dict[str, Any] = {}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise IndexConfigError(f"[index] api_key_env names {self.api_key_env}, which is not set")
            out["api_key"] = key
        elif self.username_env or self.password_env:
            user = os.environ.get(self.username_env or "")
            password = os.environ.get(self.password_env or "")
            if not user or password is None:
                raise IndexConfigError("[index] username_env/password_env name variables that are not set")
            out["basic_auth"] = (user, password)
        return out


_KINDS = {"backend": str, "urls": list, "username_env": str, "password_env": str, "api_key_env": str,
          "index_prefix": str, "path": str, "request_timeout": (int, float), "shards": int, "replicas": int,
          "batch_size": int, "poll_interval": (int, float), "qido": bool, "ca_certs": str}


def load_index_config(table: dict[str, Any] | None, data_dir: Path | None = None) -> IndexConfig:
    """Validate the raw ``[index]`` table (as archive.config keeps it) into an IndexConfig."""
    table = dict(table or {})
    unknown = set(table) - set(_KINDS)
    if unknown:
        raise IndexConfigError(f"[index] unknown keys: {', '.join(sorted(unknown))}")
    for key, kind in _KINDS.items():
        if key in table and (not isinstance(table[key], kind) or isinstance(table[key], bool) != (kind is bool)):
            raise IndexConfigError(f"[index] {key} has the wrong type ({type(table[key]).__name__})")
    backend = table.get("backend", "embedded")
    if backend not in ("embedded", "elasticsearch"):
        raise IndexConfigError('[index] backend must be "embedded" or "elasticsearch"')
    urls = tuple(str(u) for u in table.get("urls", []))
    if backend == "elasticsearch" and not urls:
        raise IndexConfigError("[index] backend = \"elasticsearch\" needs urls = [\"http://host:9200\", ...]")
    prefix = table.get("index_prefix", "slidearchive-")
    if prefix != prefix.lower() or any(c in prefix for c in ' "*\\<|,>/?#:'):
        raise IndexConfigError("[index] index_prefix must be lowercase without spaces or * \\ < | , > / ? \" # :")
    path = Path(table["path"]).expanduser() if "path" in table else (
        Path(data_dir) / "index.sqlite" if data_dir is not None else None)
    values = {k: table[k] for k in _KINDS if k in table and k not in ("urls", "path", "backend", "index_prefix")}
    if values.get("batch_size", 1) < 1:
        raise IndexConfigError("[index] batch_size must be at least 1")
    return IndexConfig(backend=backend, urls=urls, index_prefix=prefix, path=path, **values)
