"""dciodvfy (dicom3tools) finds no error in de-identified output that the input did not have.

Covers the make_wsi.py levels and the blanked overview, and highdicom's SM image,
annotations and segmentation, each stored the way ingest stores them.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from deid import Dropped, Option, Policy, blank_region, deidentify

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SHARED_DATA, make_wsi  # noqa: E402

DCIODVFY = shutil.which("dciodvfy") or "dciodvfy"  # installed by scripts/test.sh (dicom3tools)
KEY = b"dciodvfy-test-key-0123456789abcd"
POLICIES = [
    Policy(name="basic", key=KEY),
    Policy(name="research", key=KEY, overview="blank", overview_label_area=(0, 0, 400, 400),
           options=frozenset({Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_DEVICE_IDENTITY,
                              Option.CLEAN_DESCRIPTORS, Option.CLEAN_STRUCTURED_CONTENT})),
]


def errors(path: Path) -> set[str]:
    """dciodvfy's error lines, without the element paths' item numbers."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    lines = (run.stdout + run.stderr).splitlines()
    return {re.sub(r"\s+", " ", line.strip()) for line in lines if line.strip().startswith("Error")}


def inputs(tmp: Path) -> list[Path]:
    files = list(make_wsi(tmp / "wsi", "--width", "1024", "--height", "768").values())
    return files + sorted(SHARED_DATA.glob("*.dcm"))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_no_new_dciodvfy_errors(tmp_path: Path, policy: Policy) -> None:
    files = inputs(tmp_path)
    if not files:
        pytest.fail("no shared test data")
    checked = 0
    for path in files:
        try:
            outcome = deidentify(pydicom.dcmread(path, stop_before_pixels=True), policy)
        except Dropped:
            continue
        ds = outcome.dataset
        full = pydicom.dcmread(path)
        if "PixelData" in full:
            ds.add(full.get_item(0x7FE00010))
        if outcome.blank_area is not None:
            ds = blank_region(ds, outcome.blank_area)
        out = tmp_path / f"deid_{policy.name}_{path.name}"
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        out.write_bytes(buf.getvalue())
        new = errors(out) - errors(path)
        assert not new, (path.name, sorted(new))
        checked += 1
    assert checked >= 3
