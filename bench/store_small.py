"""Small-instance ingest in process: the thread CPU of ``Archive.store_file`` and of its parts.

No server, no HTTP, no DIMSE: an Archive on a fresh data directory with the default
configuration (Basic Profile de-identification, SQLite catalog, local storage) stores
``--count`` copies of bench/dataset.py's small SM instance, after ``--warm`` others, and
reports the thread CPU per instance of the whole call (median and mean) and of each part
(summed over the calls, per instance). Thread CPU, not wall time: the machine is shared,
and the flushes' waits are not CPU. The parts include the kernel's share of their
flushes (``storage.commit``: fdatasync and directory fsyncs; ``add_instance``: SQLite's).

    PYTHONPATH=. python bench/store_small.py [--count 300] [--warm 10]

PYTHONPATH names the tree measured (else an installed copy is); point it at another tree
(e.g. a checkout of main) to compare, alternating the two in the same minutes, as the load
from other work moves every figure.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

#: (module, attribute, label): the parts of store_file timed, as the ingest path calls them.
PARTS = (("archive.ingest", "read_header", "read_header (with check_values)"),
         ("archive.ingest", "validate", "validate"),
         ("deid", "deidentify", "deidentify"),
         ("archive.ingest", "_write", "header write"),
         ("archive.dicomjson", "to_json", "DICOM JSON"),
         ("archive.ingest", "index_frames", "frame index"))


def _timed(function: Callable, label: str, totals: dict[str, float]) -> Callable:
    """``function``, its thread CPU added to ``totals[label]``."""
    def add(seconds: float) -> None:
        totals[label] = totals.get(label, 0.0) + seconds

    return _profiling().thread_timed(function, add)


@functools.cache
def _profiling() -> ModuleType:
    """This checkout's dicomweb/profiling.py (standard library only), not the measured tree's:
    an older tree on PYTHONPATH has no ``thread_timed``."""
    path = Path(__file__).resolve().parent.parent / "dicomweb" / "profiling.py"
    spec = importlib.util.spec_from_file_location("_bench_profiling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warm", type=int, default=10, help="instances stored first, not counted")
    args = parser.parse_args()
    from archive.config import load_settings
    from archive.ingest import Origin
    from archive.service import Archive

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dataset import make_small_instances

    with tempfile.TemporaryDirectory() as tmp:
        files = make_small_instances(Path(tmp) / "small", args.warm + args.count)
        archive = Archive(load_settings(None, data_dir=str(Path(tmp) / "data")))
        archive.ingest.warm_up()
        origin = Origin("stow")
        for path in files[:args.warm]:
            archive.store_file(path, origin)
        totals: dict[str, float] = {}
        for module, name, label in PARTS:
            target = importlib.import_module(module)
            setattr(target, name, _timed(getattr(target, name), label, totals))
        for obj, name in ((archive.catalog, "instance"), (archive.catalog, "add_instance"),
                          (archive.storage, "commit")):
            setattr(obj, name, _timed(getattr(obj, name), f"{type(obj).__name__.lower()}.{name}", totals))
        calls = []
        for path in files[args.warm:]:
            cpu = time.thread_time()
            archive.store_file(path, origin)
            calls.append(time.thread_time() - cpu)
    print(f"store_file: median {1000 * statistics.median(calls):.3f} ms, mean {1000 * statistics.mean(calls):.3f} ms "
          f"of thread CPU per instance ({args.count} instances)")
    for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {label}: {1000 * seconds / args.count:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
