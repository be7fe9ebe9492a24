"""CPU of encoding the stored header: archive.headerwrite against pydicom's dcmwrite.

Both encode the same de-identified headers (the small SM instances of bench/dataset.py
and a slide's levels, under the Basic Profile, split at the pixel data as ingest does)
in alternating rounds, so the load of the machine weighs on both alike; CPU time of
this process (``time.process_time``), not wall time. The bytes are compared too.

    python bench/headerwrite_bench.py [--small 200] [--rounds 5]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom.filewriter import dcmwrite  # noqa: E402

import dataset  # noqa: E402
from archive import headerwrite  # noqa: E402
from archive.dicomfile import read_header  # noqa: E402
from archive.encoding import mark_unchanged  # noqa: E402
from archive.ingest import _split_at_pixel_data  # noqa: E402
from deid import Dropped, Policy, deidentify  # noqa: E402

POLICY = Policy(name="basic", key=b"b" * 32)


def headers(paths: list[Path]) -> list:
    """The headers ingest writes for ``paths``: de-identified, before the pixel data."""
    out = []
    for path in paths:
        try:
            new = deidentify(read_header(path).complete(), POLICY).dataset
        except Dropped:  # the label: not stored
            continue
        before, _ = _split_at_pixel_data(new)
        before.file_meta.MediaStorageSOPInstanceUID = before.SOPInstanceUID
        mark_unchanged(before)
        out.append(before)
    return out


def pydicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def ours_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    headerwrite.write_file(buffer, ds)
    return buffer.getvalue()


def cpu_ms_per_header(write, paths: list[Path]) -> float:
    batch = headers(paths)  # fresh headers each round: writing parses a few raw elements
    start = time.process_time()
    for ds in batch:
        write(ds)
    return 1000 * (time.process_time() - start) / len(batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=200, help="small instances per round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = dataset.make_small_instances(Path(tmp) / "small", args.small)
        slide = dataset.make_slide(Path(tmp) / "slide", 2048, 1536)
        for name, paths in (("small SM instance", small), ("slide levels", slide)):
            for ds_a, ds_b in zip(headers(paths), headers(paths)):
                assert ours_bytes(ds_a) == pydicom_bytes(ds_b), "the encoders disagree"
            ours, theirs = [], []
            for _ in range(args.rounds):
                theirs.append(cpu_ms_per_header(pydicom_bytes, paths))
                ours.append(cpu_ms_per_header(ours_bytes, paths))
            o, t = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
            print(f"{name:18s} ({len(paths)} headers x {args.rounds} rounds, median round): "
                  f"dcmwrite {t:.3f} ms, headerwrite {o:.3f} ms CPU per header ({o / t:.2f}x), bytes identical")


if __name__ == "__main__":
    main()
