"""The de-identified sequences kept between instances (deid.seqcache) change nothing stored.

A stored header must be byte for byte what the profile wrote before the cache existed,
whether its sequences came from the cache or not; an entry must never serve another
context (another key, patient or set of terms to scrub: a cached sequence with one
patient's name scrubbed would leak another's); and what the cache holds must not
contain a received identifier.
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from archive.dicomfile import read_header
from archive.ingest import Ingest
from deid import Option, Policy
from deid import seqcache

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FILES = sorted(DATA.glob("*.dcm"))
POLICIES = {
    "basic": Policy(name="basic", key=b"k" * 32),
    "clean": Policy(name="clean", key=b"k" * 32, options=frozenset({
        Option.CLEAN_DESCRIPTORS, Option.CLEAN_STRUCTURED_CONTENT, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES})),
    "uids": Policy(name="uids", key=b"j" * 32, options=frozenset({Option.RETAIN_UIDS, Option.RETAIN_DEVICE_IDENTITY})),
}


def stored_bytes(path: Path, policy: Policy, out: Path) -> bytes:
    """What the ingest path writes for ``path`` under ``policy`` (the header rewrite, pixel data copied)."""
    Ingest(None, None)._deidentify(path, read_header(path), policy, out, owned=False)
    return out.read_bytes()


@pytest.fixture
def fresh_cache():
    seqcache.CACHE.clear()
    yield seqcache.CACHE
    seqcache.CACHE.clear()


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_same_bytes_with_and_without_the_cache(policy, fresh_cache, tmp_path, monkeypatch):
    assert FILES, f"no test data in {DATA}"
    cold = {f.name: stored_bytes(f, policy, tmp_path / "out.dcm") for f in FILES}  # fills the cache
    assert fresh_cache._entries, "the shared test data has defined-length sequences: something was cached"
    warm = {f.name: stored_bytes(f, policy, tmp_path / "out.dcm") for f in FILES}
    monkeypatch.setattr(fresh_cache, "max_total", 0)  # off: the walk's elements, written by pydicom
    off = {f.name: stored_bytes(f, policy, tmp_path / "out.dcm") for f in FILES}
    for name in cold:
        assert cold[name] == warm[name] == off[name], name


def _with_specimen_text(source: Path, out: Path, patient: str, text: str) -> Path:
    """A copy of ``source`` for ``patient`` whose specimen description (a sequence kept as
    cleaned content) carries ``text``; the sequence bytes depend on ``text`` only. The
    Patient ID is the same for both names (one pseudonym, one date shift): only the
    terms to scrub tell the two apart."""
    ds = pydicom.dcmread(source)
    ds.PatientName = patient
    ds.PatientID = "PID-SAME"
    item = ds.SpecimenDescriptionSequence[0] if "SpecimenDescriptionSequence" in ds else Dataset()
    item.SpecimenShortDescription = text
    ds.SpecimenDescriptionSequence = Sequence([item])
    ds.save_as(out, enforce_file_format=True)
    return out


def test_an_entry_never_serves_another_patient_or_key(fresh_cache, tmp_path):
    source = DATA / "sm_image.dcm"
    text = "biopsy of DOEMARK^JOHNMARK compared with ROEMARK^JANEMARK"
    clean = POLICIES["clean"]  # Clean Descriptors: the patient's own name is scrubbed out of kept text
    results = {}
    for patient in ("DOEMARK^JOHNMARK", "ROEMARK^JANEMARK"):
        path = _with_specimen_text(source, tmp_path / f"{patient[:3]}.dcm", patient, text)
        for key in (b"k" * 32, b"q" * 32):
            policy = Policy(name=clean.name, key=key, options=clean.options)
            results[(patient, key)] = stored_bytes(path, policy, tmp_path / "out.dcm")
            fresh_cache.max_total, saved = 0, fresh_cache.max_total
            try:
                assert stored_bytes(path, policy, tmp_path / "out.dcm") == results[(patient, key)]
            finally:
                fresh_cache.max_total = saved
    doe, roe = results[("DOEMARK^JOHNMARK", b"k" * 32)], results[("ROEMARK^JANEMARK", b"k" * 32)]
    assert b"DOEMARK" not in doe and b"ROEMARK" in doe
    assert b"ROEMARK" not in roe and b"DOEMARK" in roe
    assert len(set(results.values())) == 4  # other key: other UIDs and pseudonyms


def test_the_cache_holds_no_received_identifier(fresh_cache, tmp_path):
    ds = pydicom.dcmread(DATA / "sm_image.dcm")
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = "1.2.826.0.1.3680043.10.998.4242"
    item = copy.deepcopy(ds.SpecimenDescriptionSequence[0])
    item.SpecimenIdentifier = "MARK-SPECIMEN-77"
    item.SpecimenUID = "1.2.826.0.1.3680043.10.998.4343"
    ds.SpecimenDescriptionSequence = Sequence([item])
    path = tmp_path / "planted.dcm"
    ds.save_as(path, enforce_file_format=True)
    stored = stored_bytes(path, POLICIES["basic"], tmp_path / "out.dcm")
    kept = b"".join(v.value for v in fresh_cache._entries.values() if v is not seqcache.UNCHANGED)
    assert kept, "the de-identified sequences were kept"
    for planted in (b"1.2.826.0.1.3680043.10.998.4242", b"MARK-SPECIMEN-77", b"1.2.826.0.1.3680043.10.998.4343"):
        assert planted not in stored and planted not in kept
    assert all(len(k) == hashlib.sha256().digest_size for k in fresh_cache._entries)  # digests, not bytes


def test_bounded(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(fresh_cache, "max_total", 2000)
    for policy in POLICIES.values():
        for f in FILES:
            stored_bytes(f, policy, tmp_path / "out.dcm")
    assert 0 < fresh_cache._total <= 2000
