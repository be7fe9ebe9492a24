"""Test data for the benchmarks, always built fresh in a temporary directory.

A slide comes from the shared generator (/work/shared/tools/make_wsi.py) with an
Extended Offset Table; its frames are also written out as plain files for the
nginx ceiling, and the small reference instance is copied under new UIDs for
the many-small-instances ingest.
"""
from __future__ import annotations

import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

MAKE_WSI = Path("/work/shared/tools/make_wsi.py")
SMALL_INSTANCE = Path("/work/shared/data/sm_image.dcm")
ITEM_TAG = b"\xfe\xff\x00\xe0"


@dataclass(frozen=True)
class Instance:
    """What a frame request needs to know about one stored instance."""

    path: Path
    study: str
    series: str
    sop: str
    frames: int
    size: int


def make_slide(out: Path, width: int, height: int) -> list[Path]:
    """Write one slide (pyramid + label + overview) with the shared generator."""
    subprocess.run([sys.executable, str(MAKE_WSI), str(out), "--width", str(width),
                    "--height", str(height), "--eot"], check=True, stdout=subprocess.DEVNULL,
                   timeout=600)
    return sorted(out.glob("*.dcm"))


def describe(path: Path) -> Instance:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Instance(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                    int(getattr(ds, "NumberOfFrames", 1)), path.stat().st_size)


def level_with_frames(instances: list[Instance], frames: int) -> Instance:
    """The level whose frame count is closest to the one asked for."""
    volumes = [i for i in instances if i.path.name.startswith("level")]
    return min(volumes, key=lambda i: abs(i.frames - frames))


def frame_ranges(path: Path) -> list[tuple[int, int]]:
    """(file offset, length) of every frame, from the Extended Offset Table.

    The generator writes Pixel Data last, one fragment per frame, so the value
    starts where the items, the empty Basic Offset Table item and the sequence
    delimiter, counted back from the end of the file, say it does. Each range is
    checked against its item header so a wrong guess fails loudly.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    count = int(ds.NumberOfFrames)
    offsets = struct.unpack(f"<{count}Q", ds.ExtendedOffsetTable)
    lengths = struct.unpack(f"<{count}Q", ds.ExtendedOffsetTableLengths)
    items = sum(8 + n for n in lengths)
    value_start = path.stat().st_size - 8 - items - 8  # delimiter, items, BOT item
    first_item = value_start + 8
    ranges = [(first_item + off + 8, n) for off, n in zip(offsets, lengths)]
    with open(path, "rb") as f:
        for start, n in (ranges[0], ranges[-1]):
            f.seek(start - 8)
            head = f.read(10)
            if head[:4] != ITEM_TAG or struct.unpack("<I", head[4:8])[0] != n or head[8:10] != b"\xff\xd8":
                raise ValueError(f"{path}: frame layout is not the generator's")
    return ranges


def read_frame(path: Path, frame: int) -> bytes:
    """The exact bytes of one frame (1-based), to check what a server returns."""
    start, n = frame_ranges(path)[frame - 1]
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(n)


def extract_frames(inst: Instance, root: Path) -> Path:
    """Write each frame to root/<SOPInstanceUID>/<n> for nginx to serve."""
    out = root / inst.sop
    out.mkdir(parents=True, exist_ok=True)
    with open(inst.path, "rb") as f:
        for n, (start, length) in enumerate(frame_ranges(inst.path), start=1):
            f.seek(start)
            (out / str(n)).write_bytes(f.read(length))
    return out


def make_small_instances(out: Path, count: int) -> list[Path]:
    """count copies of the small reference SM image, each a new instance.

    They share one new study and series, as the tiles of a scan or the results
    of a pipeline would, so the archive sees many instances in one series.
    """
    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(SMALL_INSTANCE)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    paths = []
    for n in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        path = out / f"sm_{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
