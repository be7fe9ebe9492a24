"""Slides from make_wsi.py (real JPEG WSI series with PHI): labels, overviews, PHI, determinism.

Each instance is "stored" the way the ingest path does it: the de-identified header
is written, then the original PixelData element is copied as it was (or, for a blanked
overview, blank_region re-encodes the small image).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from conftest import make_wsi
from deid import Dropped, Option, Policy, blank_region, deidentify

ROOT = Path(__file__).resolve().parents[1]
KEY = b"slides-test-key-0123456789abcdef"
PHI = [b"DOE^JANE", b"DOE", b"JANE", b"PAT-0001", b"ACC-0001", b"SSN-123-45-6789", b"St. Example", b"HOUSE",
       b"19700101", b"Springfield", b"555-0100", b"TECH^TERRY", b"PATH^PAULA", b"SLIDE-ACC-0001", b"S24-1234"]
AREA = (0, 0, 400, 400)  # make_wsi pastes the label at (20, 125)-(320, 275) of the overview


@pytest.fixture(scope="module")
def wsi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_wsi(tmp_path_factory.mktemp("wsi"), "--width", "1024", "--height", "768")


def header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def store(path: Path, policy: Policy) -> bytes:
    """What ingest writes: de-identified header + original pixel element (or blanked pixels)."""
    outcome = deidentify(header(path), policy)
    full = pydicom.dcmread(path)
    ds = outcome.dataset
    ds.add(full.get_item(0x7FE00010))
    if outcome.blank_area is not None:
        ds = blank_region(ds, outcome.blank_area)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


BASIC = Policy(name="basic", key=KEY)
BLANKING = Policy(name="research", key=KEY, overview="blank", overview_label_area=AREA,
                  options=frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_DEVICE_IDENTITY}))


@pytest.mark.parametrize("policy", [BASIC, BLANKING], ids=["basic", "blanking"])
def test_label_is_dropped_without_identifiers_in_the_reason(wsi: dict[str, Path], policy: Policy) -> None:
    with pytest.raises(Dropped) as info:
        deidentify(header(wsi["label"]), policy)
    assert info.value.reason == f"LABEL image dropped by policy {policy.name}"


def test_overview_with_label_is_dropped_by_default(wsi: dict[str, Path]) -> None:
    with pytest.raises(Dropped) as info:
        deidentify(header(wsi["overview"]), BASIC)
    assert "OVERVIEW" in info.value.reason and "basic" in info.value.reason
    assert not any(p.decode() in info.value.reason for p in PHI)


def test_overview_is_blanked_with_a_policy_area(wsi: dict[str, Path]) -> None:
    outcome = deidentify(header(wsi["overview"]), BLANKING)
    assert outcome.blank_area == AREA
    # PS3.3 wants YES on every OVERVIEW; the cleaning shows in the two attributes below.
    assert outcome.dataset.SpecimenLabelInImage == "YES"
    assert outcome.dataset.BurnedInAnnotation == "NO"
    data = store(wsi["overview"], BLANKING)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert ds.BurnedInAnnotation == "NO"
    # A re-send of the cleaned overview is kept as it is (no second blanking, not dropped).
    again = deidentify(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True), BASIC)
    assert again.blank_area is None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    pixels = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB")).astype(int)
    inside = pixels[AREA[1]:AREA[1] + AREA[3], AREA[0]:AREA[0] + AREA[2]]
    assert inside.max() <= 8, "label area must be blank"
    original = pydicom.dcmread(wsi["overview"])
    before = np.asarray(Image.open(io.BytesIO(next(generate_frames(original.PixelData, number_of_frames=1))))
                        .convert("RGB")).astype(int)
    assert before[125:275, 20:320].std() > 20  # there was a label there
    outside = pixels[:, 420:]
    assert abs(outside.mean() - before[:, 420:].mean()) < 3  # the tissue thumbnail is untouched


def test_blank_region_on_the_original_as_ingest_uses_it(wsi: dict[str, Path]) -> None:
    """archive.ingest blanks the original full instance and takes only its pixel elements."""
    outcome = deidentify(header(wsi["overview"]), BLANKING)
    blanked = blank_region(pydicom.dcmread(wsi["overview"]), outcome.blank_area)
    new = outcome.dataset
    for elem in blanked:
        if elem.tag >= 0x7FE00000 and elem.tag not in new:
            new[elem.tag] = elem
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, new, enforce_file_format=True)
    assert buf.getvalue() == store(wsi["overview"], BLANKING)
    assert not [p for p in PHI if p in buf.getvalue()]


@pytest.mark.parametrize("policy", [BASIC, BLANKING], ids=["basic", "blanking"])
def test_no_phi_in_any_stored_instance(wsi: dict[str, Path], policy: Policy) -> None:
    stored = 0
    for name, path in sorted(wsi.items()):
        assert any(p in path.read_bytes() for p in PHI)
        try:
            data = store(path, policy)
        except Dropped:
            continue
        stored += 1
        leaked = [p for p in PHI if p in data]
        assert not leaked, (name, leaked)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        assert not [e for e in ds.iterall() if e.tag.is_private]
    assert stored == (3 if policy is BLANKING else 2)


def test_specimen_codes_stay_and_text_goes(wsi: dict[str, Path]) -> None:
    out = deidentify(header(wsi["level0"]), BASIC).dataset
    spec = out.SpecimenDescriptionSequence[0]
    assert spec.PrimaryAnatomicStructureSequence[0].CodeValue == "76752008"
    stains = [item.ConceptCodeSequence[0].CodeMeaning
              for step in spec.SpecimenPreparationSequence
              for item in step.SpecimenPreparationStepContentItemSequence if "ConceptCodeSequence" in item]
    assert "hematoxylin stain" in stains and "water soluble eosin stain" in stains
    assert "SpecimenDetailedDescription" not in spec and "SpecimenShortDescription" not in spec
    assert spec.SpecimenIdentifier == out.ContainerIdentifier or spec.SpecimenIdentifier.startswith("ID")
    assert "ACC" not in spec.SpecimenIdentifier


def test_same_input_same_bytes(wsi: dict[str, Path]) -> None:
    for name in ("level0", "level1"):
        assert store(wsi[name], BASIC) == store(wsi[name], BASIC)
    assert store(wsi["overview"], BLANKING) == store(wsi["overview"], BLANKING)


def test_levels_share_new_study_series_and_frame_of_reference(wsi: dict[str, Path]) -> None:
    outs = {name: deidentify(header(wsi[name]), BLANKING).dataset for name in ("level0", "level1", "overview")}
    originals = {name: header(wsi[name]) for name in outs}
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "ContainerIdentifier"):
        values = {str(ds[kw].value) for ds in outs.values()}
        assert len(values) == 1, kw
        assert values.isdisjoint({str(ds[kw].value) for ds in originals.values()}), kw
    sop = {str(ds.SOPInstanceUID) for ds in outs.values()}
    assert len(sop) == 3 and all(u.startswith("2.25.") and len(u) <= 64 for u in sop)
    for ds in outs.values():
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # Modified dates: shifted by the same per-patient offset on every level.
    assert len({ds.StudyDate for ds in outs.values()}) == 1
    assert outs["level0"].StudyDate != originals["level0"].StudyDate
    # Retain Device Identity keeps the serial number.
    assert outs["level0"].DeviceSerialNumber == originals["level0"].DeviceSerialNumber


def test_another_key_gives_other_pseudonyms(wsi: dict[str, Path]) -> None:
    a = deidentify(header(wsi["level0"]), BASIC).dataset
    b = deidentify(header(wsi["level0"]), Policy(name="other", key=b"another-key-0123456789abcdef0123")).dataset
    assert a.PatientID != b.PatientID and a.StudyInstanceUID != b.StudyInstanceUID


def test_identified_policy_returns_the_header_unchanged(wsi: dict[str, Path]) -> None:
    ds = header(wsi["label"])
    outcome = deidentify(ds, Policy(name="identified", identified=True))
    assert outcome.dataset is ds and outcome.blank_area is None


def test_same_bytes_across_processes(wsi: dict[str, Path]) -> None:
    """No hash-order or clock dependence: two interpreters with other hash seeds agree."""
    script = (
        "import hashlib, io, sys, pydicom\n"
        "from deid import Policy, deidentify\n"
        "ds = deidentify(pydicom.dcmread(sys.argv[1], stop_before_pixels=True),\n"
        "                Policy(name='basic', key=sys.argv[2].encode())).dataset\n"
        "buf = io.BytesIO(); pydicom.dcmwrite(buf, ds, enforce_file_format=True)\n"
        "print(hashlib.sha256(buf.getvalue()).hexdigest())\n"
    )
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        run = subprocess.run([sys.executable, "-c", script, str(wsi["level0"]), KEY.decode()],
                             capture_output=True, text=True, env=env, check=True)
        digests.add(run.stdout.strip())
    assert len(digests) == 1


def test_extended_offset_table_kept_for_raw_pixels_dropped_for_blanked(tmp_path: Path) -> None:
    make_wsi(tmp_path, "--width", "512", "--height", "512", "--eot")
    level = header(tmp_path / "level0.dcm")
    assert "ExtendedOffsetTable" in level
    kept = deidentify(level, BASIC).dataset
    assert kept.ExtendedOffsetTable == level.ExtendedOffsetTable  # pixel bytes are copied unchanged
    overview = header(tmp_path / "overview.dcm")
    outcome = deidentify(overview, BLANKING)
    assert outcome.blank_area == AREA and "ExtendedOffsetTable" not in outcome.dataset
