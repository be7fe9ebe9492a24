"""A mask image (PNG, one pyramid level) plus segment descriptions -> a tiled DICOM Segmentation.

The mask must have exactly the size of the named level's total pixel matrix;
highdicom tiles it like the source image (or with ``tile``), TILED_FULL or
TILED_SPARSE (empty tiles omitted).

- BINARY: pixel value = segment number (0 background); stored 1-bit.
- FRACTIONAL: one segment, 8-bit grey 0..255 = probability 0..1.
- LABELMAP: pixel value = segment number, stored as a Label Map Segmentation.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from archive.errors import InvalidRequest
from archive.results import codes as result_codes
from archive.results.annotations import _source, pseudonymous_names_accepted

TYPES = ("BINARY", "FRACTIONAL", "LABELMAP")
MAX_PIXELS = 400_000_000


def read_mask(data: bytes) -> np.ndarray:
    """The PNG as a 2D uint8 array (palette and grey images; RGB is refused)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        img = Image.open(io.BytesIO(data))
        if img.format != "PNG":
            raise InvalidRequest("mask must be a PNG image")
        if img.mode not in ("L", "P", "1", "I;16", "I"):
            raise InvalidRequest("mask must be a single-channel PNG (grey or palette), not " + img.mode)
        arr = np.asarray(img)
    except InvalidRequest:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes
        raise InvalidRequest(f"mask is not a readable PNG image ({type(e).__name__})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.max(initial=0) > 255:
        raise InvalidRequest("mask values must be 0-255")
    return arr.astype(np.uint8)


def _segment(i: int, spec: Any, algorithm, category_default: Any):
    import highdicom as hd

    if not isinstance(spec, dict):
        raise InvalidRequest(f"segments[{i}] must be an object with number and label")
    try:
        number = int(spec.get("number", i + 1))
    except (TypeError, ValueError):
        raise InvalidRequest(f"segments[{i}].number must be an integer") from None
    label = result_codes.text(spec.get("label"), f"segments[{i}].label")
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=result_codes.coded(spec.get("category", category_default),
                                                       f"segments[{i}].category"),
        segmented_property_type=result_codes.coded(spec.get("property_type", label), f"segments[{i}].property_type"),
        algorithm_type="AUTOMATIC" if algorithm is not None else "MANUAL",
        algorithm_identification=algorithm)


def build(level_header: Dataset, mask: np.ndarray, segments: list[Any], seg_type: str = "BINARY",
          algorithm: dict[str, Any] | None = None, tiling: str = "sparse", tile: int | None = None,
          series_number: int = 901) -> Dataset:
    """A tiled highdicom Segmentation of the image ``level_header`` (one pyramid level)."""
    import highdicom as hd

    seg_type = str(seg_type).upper()
    if seg_type not in TYPES:
        raise InvalidRequest(f"type must be one of {', '.join(TYPES)}")
    rows, cols = int(level_header.TotalPixelMatrixRows), int(level_header.TotalPixelMatrixColumns)
    if mask.shape != (rows, cols):
        raise InvalidRequest(f"mask is {mask.shape[1]} x {mask.shape[0]} pixels; the level is {cols} x {rows}")
    if not isinstance(segments, list) or not segments:
        raise InvalidRequest("segments must be a non-empty list")
    algo = result_codes.algorithm(algorithm)
    descriptions = [_segment(i, s, algo, result_codes.DEFAULT_CATEGORY) for i, s in enumerate(segments)]
    numbers = [d.SegmentNumber for d in descriptions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise InvalidRequest("segment numbers must be 1, 2, 3... in order")
    if seg_type == "FRACTIONAL":
        if len(descriptions) != 1:
            raise InvalidRequest("a FRACTIONAL mask describes exactly one segment")
        pixels: np.ndarray = mask.astype(np.float32) / 255.0
    else:
        if int(mask.max(initial=0)) > len(descriptions):
            raise InvalidRequest(f"mask has value {int(mask.max())} but only {len(descriptions)} segments are described")
        pixels = mask
    if tiling not in ("full", "sparse"):
        raise InvalidRequest("tiling must be full or sparse")
    if tile is not None and not 16 <= int(tile) <= 4096:
        raise InvalidRequest("tile must be 16-4096 pixels")
    source = _source(level_header)
    try:
        with pseudonymous_names_accepted(source):
            return _segmentation(hd, source, pixels, seg_type, descriptions, series_number, tiling, tile)
    except ValueError as e:
        raise InvalidRequest(f"cannot build the segmentation: {str(e).splitlines()[0][:200]}") from None


def _segmentation(hd, source: Dataset, pixels, seg_type: str, descriptions: list, series_number: int,
                  tiling: str, tile: int | None) -> Dataset:
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels[None, :, :], segmentation_type=seg_type,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="slidearchive",
        manufacturer_model_name="slidearchive results API", software_versions="1", device_serial_number="1",
        tile_pixel_array=True, tile_size=(int(tile), int(tile)) if tile else None,
        omit_empty_frames=tiling == "sparse",
        dimension_organization_type="TILED_SPARSE" if tiling == "sparse" else "TILED_FULL",
        content_label="SEGMENTATION", max_fractional_value=255)
