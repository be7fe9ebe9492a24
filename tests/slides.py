"""Synthetic whole-slide DICOM (VL WSI IOD) for the archive's tests.

One call of :func:`make_slide` writes one slide as one series: a real pyramid
of VOLUME levels (level n is level 0 binned by 2**n), a LABEL and an OVERVIEW.
The knobs in :class:`SlideSpec` cover the variants an archive meets in the wild
(offset tables, sparse tiling, codecs, concatenations, fragmented frames), and
the headers carry PHI so de-identification has something to remove.

Everything is deterministic: the same spec gives the same pixels and the same
UIDs, so tests can regenerate expectations (:func:`level_image`,
:func:`expected_tile`) instead of storing golden files. Importing this module
has no side effects.
"""
from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image, ImageCms, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_fragments
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
# White glass: it is also what wsidicom paints for tiles a sparse level leaves
# out, so a region read across a missing tile still matches level_image().
BACKGROUND = (255, 255, 255)
BASE_SPACING_MM = 0.00025  # 0.25 um/pixel, a "40x" scan
ORIGIN_MM = (20.0, 40.0)  # slide coordinates of the top left pixel of level 0
LABEL_SIZE = (400, 200)
OVERVIEW_SIZE = (600, 200)
TRANSFER_SYNTAXES = {
    "jpeg": JPEGBaseline8Bit,
    "native": ExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
}
PLANE_POSITION_SLIDE = 0x0048021A
COLUMN_POSITION = 0x0048021E
ROW_POSITION = 0x0048021F


@dataclass(frozen=True)
class SlideSpec:
    """What slide to write. Frozen (hashable) so expectations can be cached."""

    width: int = 1024
    height: int = 768
    tile: int = 256
    # Encapsulated syntaxes only; "native" has no offset table and ignores it.
    offset_table: Literal["eot", "bot", "empty"] = "bot"
    tiling: Literal["TILED_FULL", "TILED_SPARSE"] = "TILED_FULL"
    codec: Literal["jpeg", "native", "jpeg2000"] = "jpeg"
    levels: int | None = None  # None: halve until a level has <= 2 tiles
    label: bool = True
    overview: bool = True
    concatenation_parts: int = 1  # >1: level 0 written as that many instances
    seed: int = 1
    patient_name: str = "DOE^JANE"
    patient_id: str = "PAT-0001"
    accession: str = "ACC-0001"
    fragments_per_frame: int = 1  # >1: bot/empty only (an EOT needs 1)

    def __post_init__(self) -> None:
        if min(self.width, self.height, self.tile) < 1:
            raise ValueError("width, height and tile must be positive")
        if self.offset_table not in ("eot", "bot", "empty"):
            raise ValueError(f"unknown offset_table {self.offset_table!r}")
        if self.tiling not in ("TILED_FULL", "TILED_SPARSE"):
            raise ValueError(f"unknown tiling {self.tiling!r}")
        if self.codec not in TRANSFER_SYNTAXES:
            raise ValueError(f"unknown codec {self.codec!r}")
        if self.levels is not None and self.levels < 1:
            raise ValueError("levels must be >= 1")
        if self.concatenation_parts < 1 or self.fragments_per_frame < 1:
            raise ValueError("concatenation_parts and fragments_per_frame must be >= 1")
        if self.fragments_per_frame > 1 and (
            self.codec == "native" or self.offset_table == "eot"
        ):
            raise ValueError("fragmented frames need an encapsulated codec and a BOT or empty BOT")

    @property
    def transfer_syntax(self) -> UID:
        return TRANSFER_SYNTAXES[self.codec]


# ---------------------------------------------------------------- pixels


def level_sizes(spec: SlideSpec) -> list[tuple[int, int]]:
    """(width, height) of every pyramid level; level n bins level 0 by 2**n.

    With ``levels=None`` the pyramid stops at the first level that fits in at
    most two tiles (1024x768 with 256 tiles: 4x3, 2x2, then 1x1 tiles).
    """

    def done(size: tuple[int, int], count: int) -> bool:
        if spec.levels is not None:
            return count == spec.levels
        cols, rows = tile_grid(size, spec.tile)
        return cols * rows <= 2

    sizes = [(spec.width, spec.height)]
    while not done(sizes[-1], len(sizes)):
        factor = 2 ** len(sizes)
        sizes.append((math.ceil(spec.width / factor), math.ceil(spec.height / factor)))
    return sizes


def tile_grid(size: tuple[int, int], tile: int) -> tuple[int, int]:
    """Tiles across and down."""
    return math.ceil(size[0] / tile), math.ceil(size[1] / tile)


@functools.lru_cache(maxsize=8)
def _tissue(width: int, height: int, seed: int) -> Image.Image:
    """A pink H&E-like section with purple nuclei on white glass.

    The tissue stays right of 30 % of the width, so whenever a tile is at
    most that wide the left tile column of level 0 is pure background and
    TILED_SPARSE really has tiles to leave out.
    """
    rng = np.random.default_rng(seed)
    sw, sh = max(8, width // 16), max(8, height // 16)
    yy, xx = np.mgrid[0:sh, 0:sw] / np.array([sh, sw]).reshape(2, 1, 1)
    field = np.full((sh, sw), np.inf)
    for _ in range(3):
        cx, cy = rng.uniform(0.5, 0.75), rng.uniform(0.35, 0.65)
        rx, ry = rng.uniform(0.12, 0.2), rng.uniform(0.2, 0.3)
        field = np.minimum(field, ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    small = (field + rng.normal(0, 0.1, field.shape)) < 1.0
    small[:, : math.ceil(sw * 0.3)] = False
    mask = np.asarray(
        Image.fromarray(small.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BILINEAR)
    ) > 127
    mask[:, : math.ceil(width * 0.3)] = False

    stroma = np.array([230, 160, 195], dtype=np.int16)
    # Smooth staining variation plus a little grain: textured, yet not so
    # noisy that JPEG errors swamp the tolerance of pixel comparisons.
    blotches = rng.integers(0, 50, size=(sh, sw), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(blotches).resize((width, height), Image.Resampling.BICUBIC), np.int16) - 25
    shade = (smooth + rng.integers(-6, 7, size=(height, width), dtype=np.int16))[..., None]
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    pixels[mask] = np.clip(stroma + shade, 0, 255)[mask].astype(np.uint8)

    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    count = width * height // 900
    ys, xs = rng.integers(0, height, count), rng.integers(0, width, count)
    radii = rng.integers(2, 5, count)
    for x, y, r in zip(xs, ys, radii):
        if mask[y, x]:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(90, 55, 140))
    # Nuclei at the tissue border may spill a little; keep the glass clean.
    pixels = np.asarray(image).copy()
    pixels[:, : math.ceil(width * 0.3)] = BACKGROUND
    return Image.fromarray(pixels)


def level_image(spec: SlideSpec, level: int) -> Image.Image:
    """The exact RGB pixels encoded for ``level`` (before any lossy codec).

    Level n is level 0 binned 2**n x 2**n (Pillow ``reduce``), so a region of
    level n really is that region of level 0, resized. A fresh copy, so the
    caller may draw on it.
    """
    return _level_image(spec, level).copy()


@functools.lru_cache(maxsize=32)
def _level_image(spec: SlideSpec, level: int) -> Image.Image:
    base = _tissue(spec.width, spec.height, spec.seed)
    return base if level == 0 else base.reduce(2**level)


def padded_tiles(image: Image.Image, tile: int) -> np.ndarray:
    """All tiles, row-major, edge tiles padded with BACKGROUND: (n, tile, tile, 3)."""
    cols, rows = tile_grid(image.size, tile)
    canvas = np.empty((rows * tile, cols * tile, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    canvas[: image.height, : image.width] = np.asarray(image)
    return canvas.reshape(rows, tile, cols, tile, 3).swapaxes(1, 2).reshape(-1, tile, tile, 3)


def stored_tiles(spec: SlideSpec, level: int) -> list[tuple[int, int]]:
    """(column, row) tile indices written for ``level``, in frame order.

    TILED_FULL stores the whole grid; TILED_SPARSE leaves out every tile that
    is only background (but always keeps at least one).
    """
    image = _level_image(spec, level)
    cols, rows = tile_grid(image.size, spec.tile)
    grid = [(c, r) for r in range(rows) for c in range(cols)]
    if spec.tiling == "TILED_FULL":
        return grid
    tiles = padded_tiles(image, spec.tile)
    kept = [pos for pos, t in zip(grid, tiles) if (t != BACKGROUND).any()]
    return kept or grid[:1]


def _encode(pixels: np.ndarray, codec: str) -> bytes:
    """One frame in the codec's transfer syntax."""
    if codec == "native":
        return pixels.tobytes()
    buf = io.BytesIO()
    if codec == "jpeg":
        # subsampling=1 is 4:2:2, i.e. YBR_FULL_422.
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90, subsampling=1)
        return buf.getvalue()
    try:
        import imagecodecs

        return bytes(
            imagecodecs.jpeg2k_encode(
                pixels, level=0, codecformat=imagecodecs.JPEG2K.CODEC.J2K, reversible=True, mct=False
            )
        )
    except ImportError:  # Pillow's OpenJPEG: raw codestream, reversible, no colour transform
        Image.fromarray(pixels).save(buf, format="JPEG2000", no_jp2=True, irreversible=False, mct=0)
        return buf.getvalue()


# ---------------------------------------------------------------- headers


@functools.cache
def srgb_icc() -> bytes:
    """An sRGB ICC profile for the optical path (Type 1C for colour images)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = value, scheme, meaning
    return ds


def _ds(value: float) -> str:
    """A DS string that always fits the 16 character limit."""
    return format_number_as_ds(float(value))


class _Writer:
    """Shared state of one slide: UIDs, instance numbers and common headers."""

    def __init__(self, spec: SlideSpec, out_dir: Path):
        self.spec = spec
        self.out_dir = out_dir
        self.instance_number = 0

    def uid(self, role: str) -> UID:
        """Deterministic: same spec and role, same UID; any change, new UIDs."""
        return generate_uid(entropy_srcs=[repr(self.spec), role])

    def common(self, image_type: list[str], role: str) -> Dataset:
        """Patient/study/series/equipment/specimen/optical path: PHI included."""
        s = self.spec
        self.instance_number += 1
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = WSI_SOP_CLASS
        ds.SOPInstanceUID = self.uid(role)
        ds.ImageType = image_type
        ds.Modality = "SM"
        ds.InstanceNumber = self.instance_number
        ds.ContentDate, ds.ContentTime = "20240314", "092653"
        ds.AcquisitionDateTime = "20240314092653"

        ds.PatientName = s.patient_name
        ds.PatientID = s.patient_id
        ds.IssuerOfPatientID = "St. Example Hospital MRN"
        ds.TypeOfPatientID = "TEXT"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.PatientAge = "054Y"
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = "SSN-123-45-6789", "National registry", "TEXT"
        ds.OtherPatientIDsSequence = Sequence([other])
        ds.PatientAddress = "1 Main Street, Springfield"
        ds.PatientTelephoneNumbers = "+1-555-0100"
        ds.EthnicGroup = "unknown"
        ds.PatientComments = f"Referred by Dr. House; {s.patient_name} prefers mornings"

        ds.StudyInstanceUID = self.uid("study")
        ds.StudyID = "S24-1234"
        ds.StudyDate, ds.StudyTime = "20240314", "092653"
        ds.AccessionNumber = s.accession
        ds.ReferringPhysicianName = "HOUSE^GREGORY"
        ds.StudyDescription = f"Breast core biopsy {s.patient_name}"
        ds.InstitutionName = "St. Example Hospital"
        ds.InstitutionAddress = "100 Hospital Road, Springfield"
        ds.InstitutionalDepartmentName = "Clinical Pathology"
        ds.OperatorsName = "TECH^TERRY"
        ds.PhysiciansOfRecord = "PATH^PAULA"

        ds.SeriesInstanceUID = self.uid("series")
        ds.SeriesNumber = 1
        ds.SeriesDescription = "H&E 40x"
        ds.SeriesDate, ds.SeriesTime = "20240314", "092653"
        ds.Manufacturer = "Example Scanners"
        ds.ManufacturerModelName = "SlideScan 9000"
        ds.DeviceSerialNumber = "SN-000042"
        ds.SoftwareVersions = "4.2.1"
        ds.StationName = "PATH-SCANNER-03"
        ds.FrameOfReferenceUID = self.uid("frame-of-reference")
        ds.PositionReferenceIndicator = "SLIDE_CORNER"

        ds.BurnedInAnnotation = "NO"
        ds.SpecimenLabelInImage = "NO"
        ds.VolumetricProperties = "VOLUME"
        ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        ds.FocusMethod = "AUTO"
        ds.ExtendedDepthOfField = "NO"
        ds.AcquisitionContextSequence = Sequence([])
        ds.AcquisitionDeviceProcessingDescription = "Scanned by TECH^TERRY"

        self._specimen(ds)
        self._optical_path(ds)
        block = ds.private_block(0x0009, "SLIDEARCHIVE TESTS", create=True)
        block.add_new(0x10, "LO", f"{s.patient_name} {s.patient_id}")
        block.add_new(0x11, "LO", f"barcode:{s.accession}")
        return ds

    def _specimen(self, ds: Dataset) -> None:
        """Specimen module: one H&E stained breast core on one slide."""
        s = self.spec
        ds.ContainerIdentifier = f"SLIDE-{s.accession}-A1"
        issuer = Dataset()
        issuer.LocalNamespaceEntityID = "St. Example LIS"
        ds.IssuerOfTheContainerIdentifierSequence = Sequence([issuer])
        ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])

        def item(value_type: str, name: Dataset, **value: object) -> Dataset:
            it = Dataset()
            it.ValueType = value_type
            it.ConceptNameCodeSequence = Sequence([name])
            for key, val in value.items():
                setattr(it, key, val)
            return it

        specimen_id = f"{s.accession}-A"
        staining = Dataset()
        staining.SpecimenPreparationStepContentItemSequence = Sequence([
            item("TEXT", _code("121041", "DCM", "Specimen Identifier"), TextValue=specimen_id),
            item("CODE", _code("111701", "DCM", "Processing type"),
                 ConceptCodeSequence=Sequence([_code("127790008", "SCT", "Staining")])),
            item("CODE", _code("424361007", "SCT", "Using substance"),
                 ConceptCodeSequence=Sequence([_code("12710003", "SCT", "hematoxylin stain")])),
            item("CODE", _code("424361007", "SCT", "Using substance"),
                 ConceptCodeSequence=Sequence([_code("36879007", "SCT", "water soluble eosin stain")])),
        ])
        desc = Dataset()
        desc.SpecimenIdentifier = specimen_id
        desc.SpecimenUID = self.uid("specimen")
        desc.IssuerOfTheSpecimenIdentifierSequence = Sequence([issuer])
        desc.SpecimenShortDescription = "Left breast core"
        desc.SpecimenDetailedDescription = f"Core biopsy of {s.patient_name}, left breast"
        desc.SpecimenPreparationSequence = Sequence([staining])
        desc.PrimaryAnatomicStructureSequence = Sequence([_code("76752008", "SCT", "Breast")])
        ds.SpecimenDescriptionSequence = Sequence([desc])

    @staticmethod
    def _optical_path(ds: Dataset) -> None:
        path = Dataset()
        path.OpticalPathIdentifier = "1"
        path.OpticalPathDescription = "Brightfield"
        path.IlluminationTypeCodeSequence = Sequence([_code("111744", "DCM", "Brightfield illumination")])
        path.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
        path.ICCProfile = srgb_icc()
        ds.OpticalPathSequence = Sequence([path])
        ds.NumberOfOpticalPaths = 1
        ds.TotalPixelMatrixFocalPlanes = 1

    def image(
        self,
        ds: Dataset,
        size: tuple[int, int],
        tile: tuple[int, int],
        spacing_mm: float,
        origin_mm: tuple[float, float],
        tiling: str,
    ) -> None:
        """Image pixel, multi-frame, dimension and shared functional group headers."""
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = {"jpeg": "YBR_FULL_422", "native": "RGB", "jpeg2000": "RGB"}[self.spec.codec]
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if self.spec.codec == "jpeg":
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = 10
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        else:
            ds.LossyImageCompression = "00"
        ds.Columns, ds.Rows = tile
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = size
        ds.DimensionOrganizationType = tiling
        organization = Dataset()
        organization.DimensionOrganizationUID = self.uid("dimension-organization")
        ds.DimensionOrganizationSequence = Sequence([organization])
        indices = []
        for pointer, description in ((COLUMN_POSITION, "Column"), (ROW_POSITION, "Row")):
            index = Dataset()
            index.DimensionOrganizationUID = organization.DimensionOrganizationUID
            index.DimensionIndexPointer = pointer
            index.FunctionalGroupPointer = PLANE_POSITION_SLIDE
            index.DimensionDescriptionLabel = f"{description} Position"
            indices.append(index)
        ds.DimensionIndexSequence = Sequence(indices)
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = _ds(origin_mm[0])
        origin.YOffsetInSlideCoordinateSystem = _ds(origin_mm[1])
        ds.TotalPixelMatrixOriginSequence = Sequence([origin])
        ds.ImagedVolumeWidth = size[0] * spacing_mm
        ds.ImagedVolumeHeight = size[1] * spacing_mm
        ds.ImagedVolumeDepth = 0.004

        measures = Dataset()
        measures.PixelSpacing = [_ds(spacing_mm), _ds(spacing_mm)]
        measures.SliceThickness = _ds(0.004)
        frame_type = Dataset()
        frame_type.FrameType = list(ds.ImageType)
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([frame_type])
        shared.OpticalPathIdentificationSequence = Sequence([optical])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])

    def pixel_data(self, ds: Dataset, frames: list[bytes]) -> None:
        """Pixel Data with the offset table and fragmentation the spec asks for."""
        s = self.spec
        ds.NumberOfFrames = len(frames)
        if s.codec == "native":
            ds.PixelData = b"".join(frames)
            ds["PixelData"].VR = "OB"
            return
        if s.offset_table == "eot":
            data, offsets, lengths = encapsulate_extended(frames)
            ds.ExtendedOffsetTable = offsets
            ds.ExtendedOffsetTableLengths = lengths
        else:
            data = encapsulate(frames, s.fragments_per_frame, has_bot=s.offset_table == "bot")
        ds.PixelData = data
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    def write(self, ds: Dataset, name: str) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = self.spec.transfer_syntax
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
        meta.ImplementationVersionName = "SLIDEARCHIVE_T1"
        ds.file_meta = meta
        path = self.out_dir / name
        ds.save_as(path, enforce_file_format=True)
        return path


# ---------------------------------------------------------------- slide


def _per_frame(spec: SlideSpec, positions: list[tuple[int, int]], spacing_mm: float) -> Sequence:
    """Per-frame plane positions (1-based pixel and dimension indices) for sparse tiling."""
    columns = {c: i + 1 for i, c in enumerate(sorted({c for c, _ in positions}))}
    rows = {r: i + 1 for i, r in enumerate(sorted({r for _, r in positions}))}
    items = []
    for c, r in positions:
        x_px, y_px = c * spec.tile, r * spec.tile
        plane = Dataset()
        plane.ColumnPositionInTotalImagePixelMatrix = x_px + 1
        plane.RowPositionInTotalImagePixelMatrix = y_px + 1
        # ImageOrientationSlide [0,-1,0,-1,0,0]: right is -Y, down is -X.
        plane.XOffsetInSlideCoordinateSystem = _ds(ORIGIN_MM[0] - y_px * spacing_mm)
        plane.YOffsetInSlideCoordinateSystem = _ds(ORIGIN_MM[1] - x_px * spacing_mm)
        plane.ZOffsetInSlideCoordinateSystem = _ds(0.0)
        content = Dataset()
        content.DimensionIndexValues = [columns[c], rows[r]]
        item = Dataset()
        item.FrameContentSequence = Sequence([content])
        item.PlanePositionSlideSequence = Sequence([plane])
        items.append(item)
    return Sequence(items)


def _split(count: int, parts: int) -> list[range]:
    """Contiguous, near-equal frame ranges, one per concatenation part."""
    bounds = [round(i * count / parts) for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _write_level(w: _Writer, level: int) -> list[Path]:
    spec = w.spec
    image = _level_image(spec, level)
    spacing = BASE_SPACING_MM * 2**level
    positions = stored_tiles(spec, level)
    tiles = padded_tiles(image, spec.tile)
    cols = tile_grid(image.size, spec.tile)[0]
    frames = [_encode(tiles[r * cols + c], spec.codec) for c, r in positions]
    per_frame = _per_frame(spec, positions, spacing) if spec.tiling == "TILED_SPARSE" else None
    if level == 0:
        image_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    else:
        image_type = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]

    parts = spec.concatenation_parts if level == 0 else 1
    if parts > len(frames):
        raise ValueError(f"{parts} concatenation parts but only {len(frames)} frames at level 0")
    paths = []
    for number, frame_range in enumerate(_split(len(frames), parts), start=1):
        role = f"level{level}" if parts == 1 else f"level{level}-part{number}"
        ds = w.common(image_type, role)
        w.image(ds, image.size, (spec.tile, spec.tile), spacing, ORIGIN_MM, spec.tiling)
        if level > 0:
            ds.DerivationDescription = f"Level 0 binned {2**level}x{2**level}"
        if per_frame is not None:
            ds.PerFrameFunctionalGroupsSequence = Sequence([per_frame[i] for i in frame_range])
        if parts > 1:
            ds.SOPInstanceUIDOfConcatenationSource = w.uid(f"level{level}")
            ds.ConcatenationUID = w.uid(f"level{level}-concatenation")
            ds.InConcatenationNumber = number
            ds.InConcatenationTotalNumber = parts
            ds.ConcatenationFrameOffsetNumber = frame_range.start
        w.pixel_data(ds, [frames[i] for i in frame_range])
        paths.append(w.write(ds, f"level{level}.dcm" if parts == 1 else f"level{level}_part{number}.dcm"))
    return paths


def label_image(spec: SlideSpec) -> Image.Image:
    """The slide label: PHI burned into the pixels, plus a 'barcode' box."""
    image = Image.new("RGB", LABEL_SIZE, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=20)
    for i, line in enumerate(_label_lines(spec)):
        draw.text((12, 12 + 28 * i), line, fill=(0, 0, 0), font=font)
    draw.rectangle((LABEL_SIZE[0] - 80, 10, LABEL_SIZE[0] - 12, 78), outline=(0, 0, 0), width=3)
    return image


def _label_lines(spec: SlideSpec) -> list[str]:
    return [f"PATIENT: {spec.patient_name}", "DOB: 1970-01-01", f"ACC: {spec.accession}", "St. Example Hospital"]


def overview_image(spec: SlideSpec) -> Image.Image:
    """A photo of the whole glass: label on the left, tissue thumbnail right."""
    image = Image.new("RGB", OVERVIEW_SIZE, (235, 235, 235))
    image.paste(label_image(spec).resize((160, 80)), (10, 60))
    image.paste(_level_image(spec, 0).resize((400, 180)), (190, 10))
    return image


def _write_single(w: _Writer, kind: str, image: Image.Image, spacing_mm: float) -> Path:
    """LABEL or OVERVIEW: one frame the size of the image, label in the pixels."""
    ds = w.common(["ORIGINAL", "PRIMARY", kind, "NONE"], kind.lower())
    ds.BurnedInAnnotation = "YES"
    ds.SpecimenLabelInImage = "YES"
    if kind == "LABEL":
        ds.LabelText = " ".join(_label_lines(w.spec))
        ds.BarcodeValue = w.spec.accession
    w.image(ds, image.size, image.size, spacing_mm, (0.0, 0.0), "TILED_FULL")
    w.pixel_data(ds, [_encode(np.asarray(image), w.spec.codec)])
    return w.write(ds, f"{kind.lower()}.dcm")


def make_slide(out_dir: Path, spec: SlideSpec = SlideSpec()) -> list[Path]:
    """Write the slide into ``out_dir``; return the paths, pyramid levels first.

    Files: level0.dcm (or level0_part1.dcm.. with concatenation), level1.dcm,
    ..., then label.dcm and overview.dcm when asked for.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    w = _Writer(spec, out_dir)
    paths: list[Path] = []
    for level in range(len(level_sizes(spec))):
        paths += _write_level(w, level)
    if spec.label:
        paths.append(_write_single(w, "LABEL", label_image(spec), 0.05))
    if spec.overview:
        paths.append(_write_single(w, "OVERVIEW", overview_image(spec), 0.1))
    return paths


def expected_tile(path_or_dataset: Path | str | Dataset, frame_index: int) -> bytes:
    """The stored bytes of one frame (0-based, i.e. WADO-RS frame number - 1).

    For encapsulated data this is the frame's fragments joined, including the
    pad byte that makes an odd frame even, which is what a WADO-RS frames
    request should return. Frames are found without trusting any offset table:
    make_slide splits every frame into the same number of fragments.
    """
    ds = path_or_dataset if isinstance(path_or_dataset, Dataset) else pydicom.dcmread(path_or_dataset)
    count = int(ds.get("NumberOfFrames", 1))
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        size = ds.Rows * ds.Columns * ds.SamplesPerPixel * (ds.BitsAllocated // 8)
        return bytes(ds.PixelData[frame_index * size : (frame_index + 1) * size])
    fragments = list(generate_fragments(ds.PixelData))[1:]  # first item: the BOT
    per_frame = len(fragments) // count
    return b"".join(fragments[frame_index * per_frame : (frame_index + 1) * per_frame])
