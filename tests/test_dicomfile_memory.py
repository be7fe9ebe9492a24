"""read_header parses a small file from its bytes in memory (archive/dicomfile.py
PARSE_IN_MEMORY): the same header, offsets and refusals as parsed from the file."""
from __future__ import annotations

import warnings
from pathlib import Path

import pydicom.data
import pytest

from archive import dicomfile
from archive.dicomfile import read_header
from archive.errors import ArchiveError

from conftest import SHARED as _SHARED

SHARED = _SHARED / "data"


def _inputs() -> list[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of test files it could not download
        files = [Path(p) for p in pydicom.data.get_testdata_files("*.dcm")]
    return sorted(SHARED.glob("*.dcm")) + sorted(p for p in files if p.stat().st_size <= dicomfile.PARSE_IN_MEMORY)


def _outcome(path: Path):
    """Everything read_header says of ``path``: the header's elements (raw or converted, by
    tag), file meta, transfer syntax and offsets, or the refusal's type and message."""
    try:
        h = read_header(path)
    except ArchiveError as e:
        return ("refused", type(e).__name__, str(e))
    elements = [(int(t), repr(h.dataset._dict[t])) for t in sorted(h.dataset._dict)]
    meta = [(int(t), repr(h.dataset.file_meta._dict[t])) for t in sorted(h.dataset.file_meta._dict)]
    trailer = [(int(t), repr(h.trailer._dict[t])) for t in sorted(h.trailer._dict)]
    return (elements, meta, trailer, str(h.transfer_syntax), h.pixel_offset, h.pixel_end, h.file_size,
            h.item_spans, h.dataset.is_little_endian, h.dataset.is_implicit_VR, h.dataset.preamble)


def _cut(source: Path, tmp: Path) -> list[Path]:
    """Copies of ``source`` cut short: inside the file meta, the data set and near its end."""
    data = source.read_bytes()
    out = []
    for n, length in enumerate((140, 300, len(data) // 2, len(data) - 3)):
        if 0 < length < len(data):
            p = tmp / f"{source.stem}-cut{n}.dcm"
            p.write_bytes(data[:length])
            out.append(p)
    return out


def test_small_files_read_from_memory_as_from_the_file(tmp_path, monkeypatch):
    inputs = _inputs()
    assert len(inputs) > 20
    for source in list(inputs[:12]):
        inputs += _cut(source, tmp_path)
    (tmp_path / "not-dicom.dcm").write_bytes(b"\0" * 200)
    inputs.append(tmp_path / "not-dicom.dcm")
    in_memory = [_outcome(p) for p in inputs]
    monkeypatch.setattr(dicomfile, "PARSE_IN_MEMORY", -1)  # every file parsed from the file itself
    from_file = [_outcome(p) for p in inputs]
    for path, a, b in zip(inputs, in_memory, from_file):
        assert a == b, path.name
    assert sum(o[0] == "refused" for o in in_memory) >= 5  # the cut copies were refused, not skipped


def test_the_data_set_keeps_no_buffer_of_the_received_bytes():
    source = SHARED / "sm_image.dcm"
    assert source.stat().st_size <= dicomfile.PARSE_IN_MEMORY
    ds = read_header(source).dataset
    assert ds.buffer is None


@pytest.mark.parametrize("limit", [0, 1 << 30])
def test_either_way_the_file_is_closed(limit, monkeypatch, tmp_path):
    monkeypatch.setattr(dicomfile, "PARSE_IN_MEMORY", limit)
    path = tmp_path / "x.dcm"
    path.write_bytes((SHARED / "sm_image.dcm").read_bytes())
    read_header(path)
    path.unlink()  # nothing holds it open (the spool file is removed right after a store)
    assert not path.exists()
