"""Rebuild the index from the catalog into a new generation, then swap it in.

Searches keep using the current generation until the swap. Events that arrive
during the rebuild are applied by the worker to the old generation and, after
the swap, again to the new one: the cursor is rewound to where it stood when
the rebuild began (every write is idempotent, so applying twice is harmless).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO

from .base import Index
from .state import IndexState
from .worker import DocumentSource, sync_series


class Progress:
    """A one-line progress bar on a terminal (a line per 10% otherwise), without dependencies."""

    def __init__(self, total: int, out: TextIO | None = None, label: str = "series"):
        self.total, self.out, self.label = max(total, 1), out or sys.stderr, label
        self.start = time.monotonic()
        self.done = 0
        self._last_decile = -1
        self._tty = hasattr(self.out, "isatty") and self.out.isatty()

    def update(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        frac = min(self.done / self.total, 1.0)
        line = (f"[{'#' * int(frac * 30):<30}] {self.done}/{self.total} {self.label} "
                f"{rate:,.0f}/s eta {((self.total - self.done) / rate if rate else 0):,.0f}s")
        if self._tty:
            self.out.write("\r" + line)
        elif int(frac * 10) != self._last_decile:
            self._last_decile = int(frac * 10)
            self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        if self._tty:
            self.out.write("\n")
            self.out.flush()


def reindex(catalog: Any, index: Index, state: IndexState, batch_size: int = 500,
            progress: Callable[[int], Progress] | None = Progress) -> int:
    """Rebuild every series' document into a new generation and swap; returns documents indexed."""
    start_cursor = state.cursor(index.name)
    uids = list(catalog.iter_series_uids())
    bar = progress(len(uids)) if progress else None
    source = DocumentSource(catalog, state)
    rebuild = index.begin_rebuild()
    indexed: set[str] = set()
    try:
        for i in range(0, len(uids), batch_size):
            batch = uids[i:i + batch_size]
            done, _ = sync_series(index, source, state, batch, write=rebuild)
            indexed |= done
            if bar:
                bar.update(len(batch))
        rebuild.commit()
    except BaseException:
        rebuild.abort()
        raise
    finally:
        if bar:
            bar.close()
    state.rewind_cursor(index.name, start_cursor)
    return len(indexed)
