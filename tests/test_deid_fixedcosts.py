"""The per-instance shortcuts of the de-identification and header write build what pydicom's
own ways build: the same elements in the same tables, the same values read."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag

from archive import dicomjson
from archive.dicomfile import read_header
from archive.encoding import mark_unchanged
from archive.ingest import Ingest
from deid import Option, Policy, core, deidentify, seqcache
from deid.table import load_table
from test_deid_seqcache import FILES, POLICIES
from test_deid_trailing import COEFFICIENTS_SDVN, make_input
from test_headerwrite import with_private_and_undefined_lengths


def _rebuilt(ds: Dataset) -> Dataset:
    """``ds`` built again through Dataset.add, element by element."""
    again = Dataset()
    again.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    for elem in ds._dict.values():
        again.add(elem)
    return again


def test_walked_data_sets_hold_what_dataset_add_would_put_there(tmp_path: Path):
    for path in FILES:
        variant = with_private_and_undefined_lengths(path, tmp_path / f"v-{path.name}")
        for policy in POLICIES.values():
            seqcache.CACHE.clear()
            out = deidentify(read_header(variant).dataset, policy).dataset
            again = _rebuilt(out)
            assert all(type(tag) is BaseTag for tag in out._dict)
            assert list(out._dict.items()) == list(again._dict.items()), (path.name, policy.name)
            for tag, elem in out._dict.items():
                assert getattr(elem, "private_creator", None) == getattr(again._dict[tag], "private_creator", None)
    seqcache.CACHE.clear()


def test_mark_unchanged_reads_a_deferred_value_as_dataset_elements_did(tmp_path: Path):
    big = bytes(range(256)) * 1024
    header = read_header(make_input(tmp_path, "jpeg-eot", padding=64, kept=big))
    ds = header.complete()
    assert ds.get_item(COEFFICIENTS_SDVN, keep_deferred=True).value is None
    mark_unchanged(ds)
    assert ds.get_item(COEFFICIENTS_SDVN, keep_deferred=True).value == big
    out = deidentify(read_header(FILES[0]).dataset, Policy(name="basic", key=b"k" * 32)).dataset
    out.ContentSequence = [Dataset()]
    out.ContentSequence[0].set_original_encoding(False, True, ["iso8859"])
    mark_unchanged(out)
    assert out.ContentSequence[0].original_character_set == out.ContentSequence[0]._character_set


def _stored(path: Path, policy: Policy, out: Path) -> tuple[bytes, str]:
    """Stored bytes and the DICOM JSON the catalog gets, with a cold sequence cache."""
    seqcache.CACHE.clear()
    stored, _, _ = Ingest(None, None)._deidentify(path, read_header(path), policy, out, owned=False)
    return out.read_bytes(), json.dumps(dicomjson.to_json(stored), sort_keys=True)


def _inputs(tmp_path: Path) -> list[Path]:
    """The reference objects, in explicit and implicit VR with private and undefined-length
    sequences, and one that already carries an undefined-length method code sequence."""
    paths = list(FILES)
    for path in FILES:
        for implicit in (False, True):
            paths.append(with_private_and_undefined_lengths(path, tmp_path / f"{implicit}-{path.name}", implicit))
    ds = pydicom.dcmread(FILES[0])
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethodCodeSequence = [Dataset()]
    ds.DeidentificationMethodCodeSequence[0].CodeValue = "113100"
    ds["DeidentificationMethodCodeSequence"].is_undefined_length = True
    ds.save_as(tmp_path / "again.dcm", enforce_file_format=True)
    return paths + [tmp_path / "again.dcm"]


def test_the_encoded_method_code_sequence_stores_what_the_parsed_one_did(tmp_path: Path, monkeypatch):
    paths = _inputs(tmp_path)
    out = tmp_path / "out.dcm"
    cached = {(p.name, n): _stored(p, policy, out) for p in paths for n, policy in POLICIES.items()}
    assert core._METHOD_CODES
    monkeypatch.setattr(core, "_method_codes", lambda codes, ds: core._code_sequence(codes))
    parsed = {(p.name, n): _stored(p, policy, out) for p in paths for n, policy in POLICIES.items()}
    seqcache.CACHE.clear()
    assert cached == parsed
    again = pydicom.dcmread(io.BytesIO(cached[("again.dcm", "basic")][0]))
    assert again["DeidentificationMethodCodeSequence"].is_undefined_length  # the received element, new items
    assert [item.CodeValue for item in again.DeidentificationMethodCodeSequence] == ["113100"]


def _file_meta_by_keyword(header: Dataset, out: Dataset) -> FileMetaDataset:
    """The new file meta as it was built before, keyword by keyword."""
    old = getattr(header, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = old.get("FileMetaInformationVersion", b"\x00\x01")
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", old.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", "")
    if "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    for kw in ("ImplementationClassUID", "ImplementationVersionName"):
        if kw in old:
            setattr(meta, kw, old.get(kw))
    return meta


def test_the_file_meta_is_the_one_setting_each_keyword_built(tmp_path: Path):
    headers = [read_header(p).dataset for p in _inputs(tmp_path)]
    bare = Dataset()
    bare.SOPClassUID = headers[0].SOPClassUID
    partial = read_header(FILES[0]).dataset
    del partial.file_meta.ImplementationVersionName, partial.file_meta.TransferSyntaxUID
    for header in headers + [bare, partial]:
        out = deidentify(read_header(FILES[0]).dataset, Policy(name="basic", key=b"k" * 32)).dataset
        for source in (header, out):
            ours, theirs = core._file_meta(header, source), _file_meta_by_keyword(header, source)
            assert list(ours._dict.items()) == list(theirs._dict.items())
            assert [(type(t), e.VR, type(e.value)) for t, e in ours._dict.items()] == \
                [(type(t), e.VR, type(e.value)) for t, e in theirs._dict.items()]


def test_the_table_of_actions_per_set_of_options_is_each_rule_s_action():
    table = load_table()
    for options in [frozenset()] + [policy.options for policy in POLICIES.values()] + [frozenset(Option)]:
        assert table.actions(options) == {tag: rule.action(options) for tag, rule in table.by_tag.items()}
        assert table.actions(options) is table.actions(options)  # worked out once
