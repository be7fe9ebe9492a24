"""Decoding frames and rendering images (WADO-RS rendered and thumbnail resources).

A slide's thumbnail comes from its smallest level: only that level's few tiles
are decoded, never level 0.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any, Callable

import numpy as np
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from archive.errors import InvalidDataset, InvalidRequest

#: Largest image (pixels) the rendered resource assembles from tiles.
MAX_RENDER_PIXELS = 8192 * 8192


def _value(header: dict[str, Any], tag: str, default: Any = None) -> Any:
    v = header.get(tag, {}).get("Value")
    return v[0] if v else default


def decode_frame(data: bytes, ts: str, header: dict[str, Any]) -> np.ndarray:
    """One frame to an array (RGB for colour JPEG/YBR), via pydicom's decoders."""
    try:
        decoder = get_decoder(ts)
        if UID(ts).is_encapsulated:
            data = encapsulate([data])  # the decoders read encapsulated pixel data, not bare codestreams
        arr, _ = decoder.as_array(
            data, rows=int(_value(header, "00280010")), columns=int(_value(header, "00280011")),
            samples_per_pixel=int(_value(header, "00280002", 1)), bits_allocated=int(_value(header, "00280100", 8)),
            bits_stored=int(_value(header, "00280101", _value(header, "00280100", 8))),
            pixel_representation=int(_value(header, "00280103", 0)),
            photometric_interpretation=str(_value(header, "00280004", "MONOCHROME2")),
            planar_configuration=int(_value(header, "00280006", 0)), number_of_frames=1)
    except (NotImplementedError, RuntimeError, ValueError, TypeError) as e:
        raise InvalidDataset(f"cannot decode frame: {type(e).__name__}") from None
    return arr


def native_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()


def to_image(arr: np.ndarray, header: dict[str, Any]) -> Image.Image:
    """An 8-bit PIL image from a decoded frame (windowless: min/max scaled for >8 bits)."""
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        arr = ((a - lo) / (hi - lo or 1) * 255).astype(np.uint8)
    if arr.ndim == 2:
        img = Image.fromarray(arr, "L")
        if _value(header, "00280004") == "MONOCHROME1":
            img = Image.eval(img, lambda v: 255 - v)
        return img
    return Image.fromarray(arr[..., :3], "RGB")


def tile_positions(header: dict[str, Any], count: int) -> list[tuple[int, int]]:
    """(column, row) of each frame's top-left pixel in the total pixel matrix (1-based, as in DICOM)."""
    rows, cols = int(_value(header, "00280010")), int(_value(header, "00280011"))
    total_cols = int(_value(header, "00480006", cols))
    if _value(header, "00209311", "TILED_FULL") == "TILED_SPARSE" and "52009230" in header:
        out = []
        for item in header["52009230"].get("Value", []):
            pos = item.get("0048021A", {}).get("Value", [{}])[0]
            out.append((int(_value(pos, "0048021E", 1)), int(_value(pos, "0048021F", 1))))
        return out
    per_row = math.ceil(total_cols / cols)
    return [(1 + (i % per_row) * cols, 1 + (i // per_row) * rows) for i in range(count)]


def assemble(header: dict[str, Any], count: int, frame: Callable[[int], bytes], ts: str) -> Image.Image:
    """The whole total pixel matrix of a (small) tiled instance as one image."""
    rows, cols = int(_value(header, "00280010")), int(_value(header, "00280011"))
    width = int(_value(header, "00480006", cols))
    height = int(_value(header, "00480007", rows))
    if width * height > MAX_RENDER_PIXELS:
        raise InvalidRequest(f"image of {width}x{height} pixels is too large to render whole; "
                             "request frames/N/rendered, or the series thumbnail")
    canvas: Image.Image | None = None
    for i, (x, y) in enumerate(tile_positions(header, count)):
        tile = to_image(decode_frame(frame(i + 1), ts, header), header)
        if canvas is None:
            canvas = Image.new(tile.mode, (width, height), 255 if tile.mode == "L" else (255, 255, 255))
        canvas.paste(tile, (x - 1, y - 1))
    if canvas is None:
        raise InvalidRequest("instance has no frames to render")
    return canvas


def parse_viewport(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        parts = [int(p) for p in value.split(",")]
    except ValueError:
        raise InvalidRequest("viewport must be vw,vh (integers)") from None
    if len(parts) not in (2, 6) or not 1 <= parts[0] <= 8192 or not 1 <= parts[1] <= 8192:
        raise InvalidRequest("viewport must be vw,vh with 1..8192 pixels each")
    return parts[0], parts[1]


def encode(img: Image.Image, media_type: str, quality: int, viewport: tuple[int, int] | None) -> bytes:
    if viewport:
        img = img.copy()
        img.thumbnail(viewport, Image.LANCZOS)
    buf = io.BytesIO()
    if media_type == "image/png":
        img.save(buf, format="PNG")
    else:
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def parse_quality(value: str | None) -> int:
    if value is None:
        return 90
    try:
        q = int(value)
    except ValueError:
        raise InvalidRequest("quality must be an integer 1-100") from None
    if not 1 <= q <= 100:
        raise InvalidRequest("quality must be an integer 1-100")
    return q


def header_dict(text: str) -> dict[str, Any]:
    return json.loads(text)
