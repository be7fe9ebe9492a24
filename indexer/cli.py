"""``slidearchive reindex``: the indexer's sub-command, registered by archive/cli.py.

archive/cli.py calls ``register(subparsers)``; the handler receives the parsed
args (``args.config`` when the main CLI defines it) and returns an exit code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("reindex", help="rebuild the search index from the catalog (searches keep working)",
                              description="Rebuild the search index from the catalog into a new index and "
                                          "swap it in atomically; searches use the old one until then.")
    if not _has_option(p, "--config"):
        p.add_argument("--config", type=Path, default=None, help="configuration TOML file")
    if not _has_option(p, "--data-dir"):
        p.add_argument("--data-dir", default=None, help="where instances, catalog and keys live")
    p.add_argument("--batch-size", type=int, default=None, help="documents per bulk request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handle_reindex)


def _has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return any(option in a.option_strings for a in parser._actions)


def handle_reindex(args: argparse.Namespace) -> int:
    from archive.catalog import Catalog
    from archive.config import load_settings

    from .base import IndexUnavailable
    from .factory import from_settings
    from .reindex import Progress, reindex
    from .state import open_state

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(getattr(args, "config", None), data_dir=getattr(args, "data_dir", None))
    config, index = from_settings(settings.index, settings.data_dir)
    catalog = Catalog.open(settings)
    state = open_state(config, catalog, index)
    try:
        n = reindex(catalog, index, state, args.batch_size or config.batch_size,
                    progress=None if args.no_progress else Progress)
        failed = state.failures()
    except IndexUnavailable as e:
        print(f"reindex failed: {e}; the current index is unchanged", file=sys.stderr)
        return 1
    finally:
        catalog.close()
        index.close()
    print(f"indexed {n} series into {index.name}; {len(failed)} rejected (see the log; retried by the worker)")
    return 0
