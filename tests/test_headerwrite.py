"""archive.headerwrite writes the bytes pydicom's dcmwrite / write_dataset write, for every header stored.

The stored bytes of an instance must not change: each input goes through the real ingest
rewrite (`Ingest._deidentify`: profile, split at the pixel data, header, raw pixel data,
trailer) twice, once with archive.headerwrite and once with pydicom's writers put back in
its place, and the two files must be identical. Inputs: the shared reference objects, the
slides of tests/slides.py (explicit and implicit VR, elements after the pixel data) and of
the shared generator (through bench/dataset.py), and variants with private elements and
undefined-length sequences, under several policies. What the encoder leaves to pydicom
(big endian, deflate, a raw element in another encoding) is shown to be left to it.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid

from archive import headerwrite, ingest
from archive.dicomfile import read_header
from archive.ingest import Ingest
from deid import Option, Policy, seqcache
from slides import SlideSpec, make_slide
from test_deid_seqcache import DATA, FILES, POLICIES as SEQCACHE_POLICIES
from test_deid_trailing import VARIANTS, make_input

REPO = Path(__file__).resolve().parent.parent
POLICIES = {**SEQCACHE_POLICIES,
            "safe-private": Policy(name="sp", key=b"s" * 32, options=frozenset({Option.RETAIN_SAFE_PRIVATE}),
                                   safe_private=frozenset({("MK CREATOR", 0x0009, 0x01)}))}


class _Pydicom:
    """pydicom's writers in headerwrite's place: what ingest wrote before it."""

    @staticmethod
    def write_file(target, ds: Dataset) -> None:
        dcmwrite(target, ds, enforce_file_format=True)

    @staticmethod
    def encode_elements(ds: Dataset, ts, encoding) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = ts.is_implicit_VR, ts.is_little_endian
        write_dataset(fp, ds, encoding)
        return fp.getvalue()

    @staticmethod
    def encode_element(elem, encodings, implicit: bool, little: bool) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, little
        write_data_element(fp, elem, encodings)
        return fp.getvalue()


def stored(path: Path, policy: Policy, out: Path) -> bytes:
    Ingest(None, None)._deidentify(path, read_header(path), policy, out, owned=False)
    return out.read_bytes()


def assert_same_as_pydicom(path: Path, policy: Policy, tmp: Path) -> None:
    seqcache.CACHE.clear()
    ours = stored(path, policy, tmp / "ours.dcm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ingest, "headerwrite", _Pydicom)
        mp.setattr(seqcache, "encode_element", _Pydicom.encode_element)
        seqcache.CACHE.clear()
        theirs = stored(path, policy, tmp / "theirs.dcm")
    seqcache.CACHE.clear()
    assert ours == theirs, f"{path.name} under {policy.name}: bytes differ from pydicom's"


def with_private_and_undefined_lengths(source: Path, out: Path, implicit: bool = False) -> Path:
    """``source`` with a private block and every sequence (nested ones too) of undefined length."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    block = ds.private_block(0x0009, "MK CREATOR", create=True)
    block.add_new(0x01, "LO", "MK private kept by safe-private")
    block.add_new(0x02, "OB", b"MK blob\x00")
    block.add_new(0x03, "SQ", Sequence([Dataset()]))
    block[0x03].value[0].PatientName = "DOE^JANE"

    def undefined(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                elem.is_undefined_length = True
                for item in elem.value:
                    item.is_undefined_length_sequence_item = True
                    undefined(item)
    undefined(ds)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    assert b"\xfe\xff\xdd\xe0" in out.read_bytes()  # the undefined lengths really were written
    return out


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_shared_reference_objects(policy, tmp_path):
    assert FILES, f"no test data in {DATA}"
    for path in FILES:
        assert_same_as_pydicom(path, policy, tmp_path)


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_private_elements_and_undefined_length_sequences(policy, implicit, tmp_path):
    for path in FILES:
        variant = with_private_and_undefined_lengths(path, tmp_path / f"v-{path.name}", implicit)
        assert_same_as_pydicom(variant, policy, tmp_path)


@pytest.mark.parametrize("name", VARIANTS)
def test_slides_with_elements_after_the_pixel_data(name, tmp_path):
    """Explicit and implicit VR, native and encapsulated: the trailer goes through encode_elements."""
    path = make_input(tmp_path, name)
    for policy in (POLICIES["basic"], POLICIES["uids"]):
        assert_same_as_pydicom(path, policy, tmp_path)


def test_slide_pyramid_label_and_overview(tmp_path):
    spec = SlideSpec(width=1024, height=768, levels=2, label=True, overview=True)
    paths = make_slide(tmp_path / "slide", spec)
    research = Policy(name="research", key=b"r" * 32, overview="blank", overview_label_area=(0, 0, 100, 100))
    for path in paths:
        for policy in (POLICIES["basic"], POLICIES["clean"], research):
            try:
                assert_same_as_pydicom(path, policy, tmp_path)
            except ingest._Dropped:
                pass  # the label (and the overview under basic) are not stored: nothing written


def test_bench_dataset_small_instances_and_generated_slide(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import dataset
    finally:
        sys.path.remove(str(REPO / "bench"))
    paths = dataset.make_small_instances(tmp_path / "small", 3) + dataset.make_slide(tmp_path / "wsi", 1024, 768)
    for path in paths:
        try:
            assert_same_as_pydicom(path, POLICIES["basic"], tmp_path)
        except ingest._Dropped:
            pass


def test_raw_headers_as_read_in_each_encoding(tmp_path):
    """Straight from read_header (every element raw) in explicit and implicit VR little endian."""
    for path in FILES:
        for implicit in (False, True):
            variant = with_private_and_undefined_lengths(path, tmp_path / "raw.dcm", implicit)
            ours, theirs = io.BytesIO(), io.BytesIO()
            headerwrite.write_file(ours, read_header(variant).dataset)
            dcmwrite(theirs, read_header(variant).dataset, enforce_file_format=True)
            assert ours.getvalue() == theirs.getvalue(), (path.name, implicit)


def _parsed_header(ts) -> Dataset:
    """The explicit VR reference image (so its raw elements stay raw unless re-encoded)."""
    ds = pydicom.dcmread(DATA / "sm_image.dcm", stop_before_pixels=True)
    ds.file_meta.TransferSyntaxUID = ts
    return ds


@pytest.mark.parametrize("ts", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian], ids=["big-endian", "deflate"])
def test_big_endian_and_deflate_are_left_to_pydicom(ts):
    with pytest.raises(headerwrite.Unusual):
        headerwrite.encode_file(_parsed_header(ts))
    ours, theirs = io.BytesIO(), io.BytesIO()
    headerwrite.write_file(ours, _parsed_header(ts))
    dcmwrite(theirs, _parsed_header(ts), enforce_file_format=True)
    assert ours.getvalue() == theirs.getvalue()


def test_raw_element_in_another_encoding_is_left_to_pydicom():
    """An implicit-VR raw element in an item written as explicit VR: pydicom re-encodes it."""
    def header() -> Dataset:
        ds = _parsed_header(pydicom.uid.ExplicitVRLittleEndian)
        item = Dataset()
        item.set_original_encoding(False, True, "iso8859")  # as if read: written again without parsing
        item._dict[Tag(0x00100010)] = RawDataElement(Tag(0x00100010), "PN", 8, b"DOE^JANE", 0, True, True)
        ds.add(DataElement(0x00400555, "SQ", Sequence([item])))
        return ds

    with pytest.raises(headerwrite.Unusual):
        headerwrite.encode_file(header())
    ours, theirs = io.BytesIO(), io.BytesIO()
    headerwrite.write_file(ours, header())
    dcmwrite(theirs, header(), enforce_file_format=True)
    assert ours.getvalue() == theirs.getvalue()
    assert b"\x10\x00\x10\x00PN\x08\x00DOE^JANE" in ours.getvalue()  # really re-encoded as explicit VR


def test_trailer_and_element_fallbacks_match_pydicom():
    """encode_elements / encode_element in big endian go to pydicom's writers."""
    ds = Dataset()
    ds.add(DataElement(0xFFFCFFFC, "OB", b"\x00" * 6))
    ds.add(DataElement(0x7FE10010, "LO", "MK CREATOR"))
    assert headerwrite.encode_elements(ds, ExplicitVRBigEndian, "iso8859") == \
        _Pydicom.encode_elements(ds, ExplicitVRBigEndian, "iso8859")
    seq = DataElement(0x00400555, "SQ", Sequence([Dataset()]))
    seq.value[0].PatientName = "DOE^JANE"
    for implicit, little in ((True, True), (False, True), (False, False)):
        assert headerwrite.encode_element(seq, "iso8859", implicit, little) == \
            _Pydicom.encode_element(seq, "iso8859", implicit, little)
