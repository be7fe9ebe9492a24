"""Small-instance ingest in process: the thread CPU of ``Archive.store_file`` and of its parts.

No server, no HTTP, no DIMSE: an Archive on a fresh data directory with the default
configuration (Basic Profile de-identification, SQLite catalog, local storage) stores
``--count`` copies of bench/dataset.py's small SM instance, after ``--warm`` others, and
reports the thread CPU per instance of the whole call (median and mean) and of each part
(summed over the calls, per instance). Thread CPU, not wall time: the machine is shared,
and the flushes' waits are not CPU. The parts include the kernel's share of their
flushes (``storage.commit``: fdatasync and directory fsyncs; ``add_instance``: SQLite's).

    PYTHONPATH=. python bench/store_small.py [--count 300] [--warm 10]

PYTHONPATH names the tree measured (else an installed copy is). The load from other work
moves every figure, so compare two trees in the same minutes: ``--against TREE`` keeps one
process of each (this PYTHONPATH's and TREE's) and has them take turns of ``--per-turn``
instances, and prints the thread CPU of ``store_file`` and of its de-identification and
header write (``Ingest._deidentify``) with the ratio of the two trees paired by turn:

    PYTHONPATH=. python bench/store_small.py --against /path/to/main [--turns 20 --per-turn 30]
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
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


def _archive(work: Path, count: int):
    """(an Archive on a fresh data directory after the servers' warm-up, ``count`` small instances)."""
    from archive.config import load_settings
    from archive.service import Archive

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dataset import make_small_instances

    files = make_small_instances(work / "small", count)
    archive = Archive(load_settings(None, data_dir=str(work / "data")))
    archive.ingest.warm_up()
    return archive, files


def _turn_child(per_turn: int, turns: int, work: Path) -> None:
    """``--against``'s child: for each line read, ``per_turn`` instances stored; prints the mean
    thread CPU of store_file and of ``Ingest._deidentify`` in them, in ms."""
    from archive.ingest import Origin

    archive, paths = _archive(work, per_turn * (turns + 1))
    spent = {"deidentify": 0.0}
    archive.ingest._deidentify = _timed(archive.ingest._deidentify, "deidentify", spent)
    print("ready", flush=True)
    for _ in sys.stdin:
        spent["deidentify"], total = 0.0, 0.0
        for path in paths[:per_turn]:
            started = time.thread_time()
            archive.store_file(path, Origin("stow"))
            total += time.thread_time() - started
        del paths[:per_turn]
        print(json.dumps([total / per_turn * 1e3, spent["deidentify"] / per_turn * 1e3]), flush=True)


def _against(tree: Path, per_turn: int, turns: int) -> int:
    """This tree and ``tree`` in turns, the order swapped every turn (the first turn warms up)."""
    trees = {"this": os.environ.get("PYTHONPATH", ""), "against": str(tree)}
    rows: dict[str, list[list[float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="store-small-turns-") as tmp:
        children = {name: subprocess.Popen(
            [sys.executable, __file__, "--per-turn", str(per_turn), "--turns", str(turns), "--turn-child",
             f"{tmp}/{name}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": path}) for name, path in trees.items()}
        for child in children.values():
            assert child.stdout.readline().strip() == "ready"
        for turn in range(turns + 1):
            for name in (list(trees) if turn % 2 == 0 else list(reversed(trees))):
                children[name].stdin.write("go\n")
                children[name].stdin.flush()
                figures = json.loads(children[name].stdout.readline())
                if turn:
                    rows[name].append(figures)
        for child in children.values():
            child.stdin.close()
            child.wait(timeout=60)
    for name, figures in rows.items():
        print(f"{name} ({trees[name] or '.'}): store_file {statistics.median(r[0] for r in figures):.2f} ms CPU "
              f"(de-identification and header write {statistics.median(r[1] for r in figures):.2f}), "
              f"median of {len(figures)} turns of {per_turn}")
    for k, what in ((0, "store_file"), (1, "de-identification and header write")):
        ratios = [a[k] / b[k] for a, b in zip(rows["this"], rows["against"])]
        print(f"{what}: this / against, paired by turn: median {statistics.median(ratios):.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--warm", type=int, default=10, help="instances stored first, not counted")
    parser.add_argument("--against", type=Path, metavar="TREE", help="take turns with TREE's code instead")
    parser.add_argument("--turns", type=int, default=20, help="with --against: turns counted")
    parser.add_argument("--per-turn", type=int, default=30, help="with --against: instances a turn")
    parser.add_argument("--turn-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.turn_child:
        _turn_child(args.per_turn, args.turns, args.turn_child)
        return 0
    if args.against:
        return _against(args.against, args.per_turn, args.turns)
    from archive.ingest import Origin

    with tempfile.TemporaryDirectory() as tmp:
        archive, files = _archive(Path(tmp), args.warm + args.count)
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
