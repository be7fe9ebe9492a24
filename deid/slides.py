"""Slide-specific rules: LABEL and OVERVIEW images, burned-in text, blanking a label area.

A slide label carries the patient's name and accession number as pixels; no header
rule reaches it. So: LABEL images are dropped; an OVERVIEW that shows the label is
dropped unless the policy names the label's rectangle, which is then blanked (the
caller re-encodes just that small image); any other image that declares burned-in
annotation is dropped, because nothing here can find and clean the text.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from deid.errors import Dropped

if TYPE_CHECKING:  # pragma: no cover
    from deid.policy import Policy

Area = tuple[int, int, int, int]

NATIVE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
BLANKABLE_SYNTAXES = NATIVE_SYNTAXES | {JPEGBaseline8Bit}


def _flag(ds: Dataset, keyword: str) -> bool:
    return str(ds.get(keyword, "") or "").strip().upper() == "YES"


def image_flavor(ds: Dataset) -> str:
    """Value 3 of Image Type (VOLUME, LABEL, OVERVIEW, THUMBNAIL...) or ''."""
    image_type = ds.get("ImageType")
    if image_type is None:
        return ""
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return str(values[2]).strip().upper() if len(values) > 2 else ""


def label_flag_after_blanking(ds: Dataset) -> str:
    """Specimen Label in Image once the label area is blanked.

    NO would say best that the label can no longer be read, but PS3.3 requires YES on
    every OVERVIEW image (dciodvfy: "required to be YES for OVERVIEW or LABEL image"),
    so an OVERVIEW keeps YES; Burned In Annotation NO and the Clean Pixel Data code
    (113101) in the De-identification Method Code Sequence say that it was cleaned.
    """
    return "YES" if image_flavor(ds) in ("OVERVIEW", "LABEL") else "NO"


def already_cleaned(ds: Dataset) -> bool:
    """An overview this archive (or another) already blanked: de-identified, code 113101, no burned-in text."""
    if _flag(ds, "BurnedInAnnotation") or not _flag(ds, "PatientIdentityRemoved"):
        return False
    codes = ds.get("DeidentificationMethodCodeSequence") or []
    return any(str(item.get("CodeValue", "")) == "113101" for item in codes)


def decide(header: Dataset, policy: "Policy") -> Area | None:
    """Drop (raise Dropped) or keep an instance; return the area to blank, if any."""
    flavor = image_flavor(header)
    if flavor == "LABEL":
        raise Dropped(f"LABEL image dropped by policy {policy.name}")
    if _flag(header, "RecognizableVisualFeatures"):
        raise Dropped(f"image with recognizable visual features dropped by policy {policy.name}")
    shows_label = _flag(header, "SpecimenLabelInImage")
    burned_in = _flag(header, "BurnedInAnnotation")
    if not (shows_label or burned_in):
        return None
    if flavor == "OVERVIEW" and already_cleaned(header):
        return None
    if flavor == "OVERVIEW" and policy.overview == "blank" and policy.overview_label_area:
        ts = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
        if ts not in BLANKABLE_SYNTAXES:
            raise Dropped(f"OVERVIEW image in a transfer syntax that cannot be blanked, dropped by policy {policy.name}")
        return policy.overview_label_area
    if flavor == "OVERVIEW":
        raise Dropped(f"OVERVIEW image showing the slide label dropped by policy {policy.name}")
    what = "specimen label in image" if shows_label else "burned-in annotation"
    raise Dropped(f"{flavor or 'image'} with {what} dropped by policy {policy.name}")


def _frame_origins(ds: Dataset, n_frames: int) -> list[tuple[int, int]]:
    """(column, row) of each frame's top-left corner in the total pixel matrix."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    total_cols = int(ds.get("TotalPixelMatrixColumns", cols) or cols)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if str(ds.get("DimensionOrganizationType", "TILED_FULL")).upper() != "TILED_FULL" and per_frame:
        origins = []
        for item in per_frame:
            pos = item.PlanePositionSlideSequence[0]
            origins.append((int(pos.ColumnPositionInTotalImagePixelMatrix) - 1,
                            int(pos.RowPositionInTotalImagePixelMatrix) - 1))
        return origins
    across = max(1, -(-total_cols // cols))
    return [((k % across) * cols, (k // across) * rows) for k in range(n_frames)]


def _blank(array: np.ndarray, origin: tuple[int, int], area: Area) -> bool:
    """Zero the part of `area` (x, y, w, h in total-matrix pixels) inside one frame."""
    x, y, w, h = area
    fx, fy = origin
    rows, cols = array.shape[0], array.shape[1]
    x0, y0 = max(x - fx, 0), max(y - fy, 0)
    x1, y1 = min(x + w - fx, cols), min(y + h - fy, rows)
    if x0 >= x1 or y0 >= y1:
        return False
    array[y0:y1, x0:x1, ...] = 0
    return True


def blank_region(full_ds: Dataset, area: Area) -> Dataset:
    """Return a copy of `full_ds` with `area` blanked (black) in every frame, same transfer syntax.

    Only the pixel data (and its offset tables) change, plus Burned In Annotation NO.
    `full_ds` may be the original full instance (then take only the elements from
    (7FE0,0000) on into outcome.dataset, which already carries the de-identified
    header and no Extended Offset Table) or outcome.dataset with the original pixel
    data element attached; never store the header of an original passed in here.
    JPEG Baseline frames are decoded and re-encoded with Pillow (Pillow reads YCbCr as
    RGB and writes 4:2:2 YCbCr, so YBR_FULL_422 stays true); native pixel data is edited
    in place. Deterministic: same input, same bytes.
    """
    ts = str(full_ds.file_meta.TransferSyntaxUID)
    if ts not in BLANKABLE_SYNTAXES:
        raise ValueError("transfer syntax cannot be blanked")
    out = Dataset()
    out.update(full_ds)
    out.file_meta = full_ds.file_meta
    n_frames = int(full_ds.get("NumberOfFrames", 1) or 1)
    origins = _frame_origins(full_ds, n_frames)
    if ts == JPEGBaseline8Bit:
        from PIL import Image

        frames = []
        for k, frame in enumerate(generate_frames(full_ds.PixelData, number_of_frames=n_frames)):
            with Image.open(io.BytesIO(frame)) as img:
                img.load()
                mode = img.mode
                array = np.array(img)
            if _blank(array, origins[k], area):
                buf = io.BytesIO()
                Image.fromarray(array).save(buf, format="JPEG", quality=90,
                                                       subsampling=1 if mode == "RGB" else 0)
                frame = buf.getvalue()
            frames.append(frame)
        out.PixelData = encapsulate(frames, has_bot=n_frames > 1)
        out["PixelData"].VR = "OB"
        out["PixelData"].is_undefined_length = True
        for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            if kw in out:
                del out[kw]
    else:
        pixels = full_ds.pixel_array.copy()
        stack = pixels if n_frames > 1 else pixels[np.newaxis, ...]
        for k in range(n_frames):
            _blank(stack[k], origins[k], area)
        if int(full_ds.get("PlanarConfiguration", 0) or 0) == 1 and stack.ndim == 4:
            stack = np.ascontiguousarray(stack.transpose(0, 3, 1, 2))
        out.PixelData = stack.tobytes()
    out.SpecimenLabelInImage = label_flag_after_blanking(full_ds)
    out.BurnedInAnnotation = "NO"
    return out
