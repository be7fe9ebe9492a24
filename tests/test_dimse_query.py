"""C-FIND with DCMTK's findscu at every level: wildcard, range and UID-list matching, as QIDO-RS matches."""
from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelFind)

from slides import SlideSpec, make_slide
from test_dimse_tools import AE as ARCHIVE_AE, PROPOSE, assert_healthy, find, needs_dcmtk, store

pytestmark = needs_dcmtk

#: (name, patient id, study date): three patients, two of them with names starting SM.
PATIENTS = {"A": ("SMITH^ANNA", "Q-A", "20230105"), "B": ("SMYTHE^BOB", "Q-B", "20230620"),
            "C": ("JONES^CARL", "Q-C", "20240101")}


@pytest.fixture(scope="module")
def slides(server, tmp_path_factory):
    """Store one small slide per patient; returns {letter: [datasets of the files sent]}."""
    root = tmp_path_factory.mktemp("query-slides")
    out = {}
    for n, (letter, (name, pid, date)) in enumerate(PATIENTS.items()):
        paths = make_slide(root / letter, SlideSpec(width=600, height=400, seed=60 + n, patient_name=name,
                                                    patient_id=pid, accession=f"ACC-{letter}", overview=False))
        datasets = []
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.StudyDate = date
            ds.save_as(p)
            datasets.append(pydicom.dcmread(p, stop_before_pixels=True))
        out[letter] = datasets
        result = store(server, root / letter, options=PROPOSE["jpeg"])
        assert result.returncode == 0, result.stdout + result.stderr
    return out


def _values(responses, keyword) -> set[str]:
    return {str(r.get(keyword, "")) for r in responses}


def test_study_wildcard_on_name(server, slides, tmp_path):
    result, rsp = find(server, tmp_path, "STUDY", {"PatientName": "SM*", "StudyInstanceUID": "", "PatientID": ""})
    assert result.returncode == 0, result.stderr
    assert _values(rsp, "PatientID") == {"Q-A", "Q-B"}
    assert all(r.QueryRetrieveLevel == "STUDY" and r.RetrieveAETitle == ARCHIVE_AE for r in rsp)


def test_study_name_matching_is_case_insensitive_like_qido(server, slides, tmp_path):
    _, rsp = find(server, tmp_path, "STUDY", {"PatientName": "jones*", "PatientID": ""})
    assert _values(rsp, "PatientID") == {"Q-C"}


@pytest.mark.parametrize("date_range, expected", [
    ("20230101-20231231", {"Q-A", "Q-B"}),
    ("-20230131", {"Q-A"}),
    ("20231201-", {"Q-C"}),
    ("20230620", {"Q-B"}),
])
def test_study_date_range(server, slides, tmp_path, date_range, expected):
    _, rsp = find(server, tmp_path, "STUDY", {"StudyDate": date_range, "PatientID": "Q-*"})
    assert _values(rsp, "PatientID") == expected


def test_study_uid_list(server, slides, tmp_path):
    a, c = slides["A"][0].StudyInstanceUID, slides["C"][0].StudyInstanceUID
    _, rsp = find(server, tmp_path, "STUDY", {"StudyInstanceUID": f"{a}\\{c}", "NumberOfStudyRelatedInstances": "",
                                              "ModalitiesInStudy": ""})
    assert _values(rsp, "StudyInstanceUID") == {a, c}
    for r in rsp:
        assert int(r.NumberOfStudyRelatedInstances) == len(slides["A"])
        assert list(r.ModalitiesInStudy) == ["SM"] or r.ModalitiesInStudy == "SM"


def test_return_keys_stored_or_empty(server, slides, tmp_path):
    """A requested key is returned with its stored value, or zero-length when the archive has none."""
    result, rsp = find(server, tmp_path, "STUDY", {"PatientID": "Q-A", "StudyDescription": "", "PatientComments": "",
                                                   "PatientBreedDescription": ""})
    assert result.returncode == 0, result.stderr
    assert len(rsp) == 1
    assert rsp[0].StudyDescription.startswith("Breast core biopsy")
    assert rsp[0].PatientComments.startswith("Referred by")
    assert "PatientBreedDescription" in rsp[0] and rsp[0].PatientBreedDescription in ("", None)


def test_series_level(server, slides, tmp_path):
    b = slides["B"][0]
    _, rsp = find(server, tmp_path, "SERIES", {"StudyInstanceUID": b.StudyInstanceUID, "SeriesInstanceUID": "",
                                               "Modality": "", "NumberOfSeriesRelatedInstances": ""})
    assert len(rsp) == 1
    assert rsp[0].SeriesInstanceUID == b.SeriesInstanceUID and rsp[0].Modality == "SM"
    assert int(rsp[0].NumberOfSeriesRelatedInstances) == len(slides["B"])
    assert rsp[0].StudyInstanceUID == b.StudyInstanceUID


def test_series_level_modality_wildcard(server, slides, tmp_path):
    _, rsp = find(server, tmp_path, "SERIES", {"Modality": "S?", "PatientID": "Q-*", "SeriesInstanceUID": ""})
    assert len(rsp) == 3


def test_image_level_returns_slide_attributes(server, slides, tmp_path):
    c = slides["C"]
    _, rsp = find(server, tmp_path, "IMAGE", {"StudyInstanceUID": c[0].StudyInstanceUID,
                                              "SeriesInstanceUID": c[0].SeriesInstanceUID, "SOPInstanceUID": "",
                                              "InstanceAvailability": ""})
    assert _values(rsp, "SOPInstanceUID") == {d.SOPInstanceUID for d in c}
    assert _values(rsp, "InstanceAvailability") == {"ONLINE"}
    by_uid = {r.SOPInstanceUID: r for r in rsp}
    for sent in c:
        got = by_uid[sent.SOPInstanceUID]
        assert list(got.ImageType) == list(sent.ImageType)
        assert int(got.TotalPixelMatrixColumns) == int(sent.TotalPixelMatrixColumns)
        assert int(got.TotalPixelMatrixRows) == int(sent.TotalPixelMatrixRows)
        assert int(got.NumberOfFrames) == int(sent.NumberOfFrames)
        assert got.ContainerIdentifier == sent.ContainerIdentifier
        assert got.SOPClassUID == sent.SOPClassUID


def test_image_level_image_type_wildcard(server, slides, tmp_path):
    a = slides["A"]
    volumes = {d.SOPInstanceUID for d in a if "VOLUME" in d.ImageType}
    _, rsp = find(server, tmp_path, "IMAGE", {"SeriesInstanceUID": a[0].SeriesInstanceUID, "ImageType": "VOLUME",
                                              "SOPInstanceUID": ""})
    assert _values(rsp, "SOPInstanceUID") == volumes and volumes


def test_image_level_sop_uid_list(server, slides, tmp_path):
    picks = [slides["A"][0].SOPInstanceUID, slides["B"][1].SOPInstanceUID]
    _, rsp = find(server, tmp_path, "IMAGE", {"SOPInstanceUID": "\\".join(picks)})
    assert _values(rsp, "SOPInstanceUID") == set(picks)


def test_patient_level_patient_root(server, slides, tmp_path):
    _, rsp = find(server, tmp_path, "PATIENT", {"PatientID": "Q-*", "PatientName": "",
                                                "NumberOfPatientRelatedStudies": "",
                                                "NumberOfPatientRelatedInstances": ""}, model="-P")
    assert {(str(r.PatientName), r.PatientID) for r in rsp} == {(n, i) for n, i, _ in PATIENTS.values()}
    for r in rsp:
        assert int(r.NumberOfPatientRelatedStudies) == 1
        assert int(r.NumberOfPatientRelatedInstances) == len(slides["A"])


def test_patient_root_study_level(server, slides, tmp_path):
    _, rsp = find(server, tmp_path, "STUDY", {"PatientID": "Q-B", "StudyInstanceUID": ""}, model="-P")
    assert _values(rsp, "StudyInstanceUID") == {slides["B"][0].StudyInstanceUID}


# --- statuses, checked with pynetdicom as the peer (it reports the exact status) ----------------


def _statuses(server, identifier: Dataset, model=StudyRootQueryRetrieveInformationModelFind) -> list[int]:
    ae = AE(ae_title="FINDPY")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
    assert assoc.is_established
    try:
        return [status.Status for status, _ in assoc.send_c_find(identifier, model)]
    finally:
        assoc.release()


def _identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_bad_date_is_cannot_understand(server, slides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the malformed DA, which is the point
        identifier = _identifier("STUDY", StudyDate="2023")
    assert _statuses(server, identifier)[-1] == 0xC000


def test_control_character_in_a_key_is_refused_with_a_reason(server, slides):
    """A NUL inside a matching value: 0xC000 with an Error Comment that names the key, not a database error."""
    ae = AE(ae_title="FINDPY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
    assert assoc.is_established
    try:
        for key in ("PatientID", "StudyDescription"):
            answers = list(assoc.send_c_find(_identifier("STUDY", **{key: "a\x00b*"}),
                                             StudyRootQueryRetrieveInformationModelFind))
            status = answers[-1][0]
            assert status.Status == 0xC000 and status.ErrorComment.startswith(f"{key}: control character"), status
    finally:
        assoc.release()


def test_key_below_level_is_identifier_mismatch(server, slides):
    assert _statuses(server, _identifier("STUDY", SeriesInstanceUID="1.2.3"))[-1] == 0xA900


def test_patient_level_needs_patient_root(server, slides):
    assert _statuses(server, _identifier("PATIENT", PatientID=""))[-1] == 0xA900
    statuses = _statuses(server, _identifier("PATIENT", PatientID="Q-A"), PatientRootQueryRetrieveInformationModelFind)
    assert statuses == [0xFF00, 0x0000]


def test_cancel(server, slides):
    """C-CANCEL after the first pending response: the SCP stops with Cancel (or had already finished)."""
    ae = AE(ae_title="FINDPY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=ARCHIVE_AE)
    assert assoc.is_established
    total = sum(len(v) for v in slides.values())
    statuses = []
    try:
        for status, _ in assoc.send_c_find(_identifier("IMAGE", SOPInstanceUID=""), StudyRootQueryRetrieveInformationModelFind,
                                           msg_id=7):
            statuses.append(status.Status)
            if len(statuses) == 1:
                assoc.send_c_cancel(7, query_model=StudyRootQueryRetrieveInformationModelFind)
    finally:
        assoc.release()
    assert statuses[-1] in (0xFE00, 0x0000)
    if statuses[-1] == 0xFE00:
        assert statuses.count(0xFF00) < total
    assert_healthy(server)
