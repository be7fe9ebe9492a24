"""No PHI anywhere the archive keeps or serves: storage, SQLite files, outbox, index, logs, every DICOMweb answer.

A data set with a distinct marker in every attribute of PS3.15 Table E.1-1 (nested and
private too), slides from the shared generator (PHI in headers, burned into LABEL and
OVERVIEW) and two TILED_SPARSE levels (encapsulated, and native in implicit VR) with
markers in their per-frame functional group items, in private tags and in elements that
sort after the pixel data (Digital Signatures, Data Set Trailing Padding, private groups
above 7FE0) go in through STOW-RS and the import command under the default policy; then
every byte the archive keeps or answers (QIDO, metadata, instances, series, studies,
bulk data, frames, search) is searched for every marker.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from conftest import make_wsi
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian
from slides import SlideSpec, make_slide
from test_deid_profile import marked_dataset
from test_deid_trailing import plant_after_pixel_data
from test_results_support import stow

REPO = Path(__file__).resolve().parent.parent
#: PHI the shared generator writes (headers and burned-in text).
SLIDE_PHI = [b"DOE^JANE", b"DOE", b"PAT-0001", b"ACC-0001", b"SSN-123-45-6789", b"St. Example", b"HOUSE",
             b"TECH^TERRY", b"PATH^PAULA", b"SN-000042", b"PATH-SCANNER-03", b"Main Street", b"555-0100",
             b"19700101", b"SLIDE-ACC-0001"]
MARKER = re.compile(rb"MK[0-9]{4}|1\.2\.826\.0\.1\.3680043\.10\.99[89]\.")


def plant_per_frame(ds: Dataset) -> None:
    """Markers in per-frame functional group items: text, a person name, a UID, private tags."""
    items = ds.PerFrameFunctionalGroupsSequence
    for k in (0, len(items) - 1):
        content = items[k].FrameContentSequence[0]
        content.FrameComments = f"MK851{k % 10} frame comment about DOE^JANE"
        content.OperatorsName = "MK8520^OPERATOR"
        source = Dataset()
        source.ReferencedSOPClassUID = ds.SOPClassUID
        source.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.998.85{30 + k % 10}"
        derivation = Dataset()
        derivation.SourceImageSequence = Sequence([source])
        items[k].DerivationImageSequence = Sequence([derivation])
        items[k].add(DataElement(0x00090010, "LO", "MK8540 PRIVATE CREATOR"))
        items[k].add(DataElement(0x00091001, "LO", "MK8541 private text in a frame item"))
        content.add(DataElement(0x00110010, "LO", "MK8542 NESTED CREATOR"))
        content.add(DataElement(0x00111001, "UT", "MK8543 nested private text"))
    ds.add(DataElement(0x00290010, "LO", "MK8544 TOP CREATOR"))
    ds.add(DataElement(0x00291001, "LT", "MK8545 private text before the pixel data"))


def sparse_levels(work: Path) -> list[Path]:
    """Two TILED_SPARSE levels with markers per frame, in private tags and after the pixel data."""
    out = []
    for codec, implicit in (("jpeg", False), ("native", True)):
        spec = SlideSpec(width=768, height=512, codec=codec, tiling="TILED_SPARSE", offset_table="eot",
                         levels=1, label=False, overview=False, seed=2 if implicit else 3)
        ds = dcmread(make_slide(work / codec, spec)[0])
        plant_per_frame(ds)
        plant_after_pixel_data(ds, padding=1 << 17)  # bigger than what is read eagerly after the pixels
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        path = work / f"sparse-{codec}.dcm"
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        assert all(m in data for m in (b"MK8510", b"MK8541", b"MK8543", b"MK8545", b"MK8006", b"MK8011"))
        out.append(path)
    return out


@pytest.fixture(scope="module")
def deidentifying_server(tmp_path_factory):
    from conftest import Server

    server = Server(tmp_path_factory.mktemp("deid-server"), "", dimse=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ingested(deidentifying_server, tmp_path_factory) -> dict:
    server = deidentifying_server
    work = tmp_path_factory.mktemp("phi")
    slide_dir = work / "slide"
    make_wsi(slide_dir, "--width", "1024", "--height", "768")
    marked, _, _ = marked_dataset()
    marked_path = work / "marked.dcm"
    marked.save_as(marked_path, enforce_file_format=True)
    client = DICOMwebClient(url=server.dicomweb)
    responses = [client.store_instances([dcmread(p) for p in sorted(slide_dir.iterdir())])]
    for path in sparse_levels(work):  # as bytes: the elements after the pixel data stay where they are
        status, response = stow(server, [path])
        assert status in (200, 202), response
        responses.append(response)
    imported = subprocess.run([sys.executable, "-m", "archive.cli", "import", str(marked_path),
                               "--data-dir", str(server.data_dir), "--config", str(server.config_path)],
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    return {"server": server, "client": client, "responses": responses, "import_output": imported.stdout + imported.stderr}


def _served(server, client) -> list[bytes]:
    """Everything the archive answers about what it holds."""
    dicom = {"Accept": 'multipart/related; type="application/dicom"'}
    out = [requests.get(f"{server.url}/api/search").content]
    for level in ("studies", "series", "instances"):
        out.append(requests.get(f"{server.dicomweb}/{level}?includefield=all").content)
    for study in client.search_for_studies():
        uid = study["0020000D"]["Value"][0]
        out.append(requests.get(f"{server.dicomweb}/studies/{uid}/metadata").content)
        out.append(requests.get(f"{server.dicomweb}/studies/{uid}", headers=dicom).content)
        for series in client.search_for_series(uid):
            se = series["0020000E"]["Value"][0]
            out.append(requests.get(f"{server.dicomweb}/studies/{uid}/series/{se}/metadata").content)
            out.append(requests.get(f"{server.dicomweb}/studies/{uid}/series/{se}", headers=dicom).content)
        for inst in client.search_for_instances(uid):
            se, sop = inst["0020000E"]["Value"][0], inst["00080018"]["Value"][0]
            base = f"{server.dicomweb}/studies/{uid}/series/{se}/instances/{sop}"
            out.append(requests.get(base, headers=dicom).content)
            response = requests.get(f"{base}/metadata")
            out.append(response.content)
            meta = response.json()[0]
            for value in _bulk_uris(meta):
                out.append(requests.get(value, headers={"Accept": "application/octet-stream"}).content)
            frames = int(meta.get("00280008", {}).get("Value", [0])[0])
            if frames:
                numbers = ",".join(str(n) for n in range(1, frames + 1))
                answer = requests.get(f"{base}/frames/{numbers}", headers={
                    "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
                assert answer.status_code == 200
                out.append(answer.content)
    return out


def _bulk_uris(meta: dict) -> list[str]:
    """Every BulkDataURI in a DICOM JSON object, nested ones too."""
    uris = []
    for value in meta.values():
        if "BulkDataURI" in value:
            uris.append(value["BulkDataURI"])
        for item in value.get("Value", []) if value.get("vr") == "SQ" else []:
            uris.extend(_bulk_uris(item))
    return uris


def test_no_marker_and_no_slide_phi_anywhere(ingested):
    server, client = ingested["server"], ingested["client"]
    everything = server.kept() + [("served", b) for b in _served(server, client)]
    everything.append(("import output", ingested["import_output"].encode()))
    everything.append(("STOW responses", str(ingested["responses"]).encode()))
    assert len(everything) > 10
    for where, data in everything:
        m = MARKER.search(data)
        assert m is None, f"marker {m.group()!r} found in {where}"
        for phi in SLIDE_PHI:
            assert phi not in data, f"{phi!r} found in {where}"


def test_no_label_or_overview_retrievable(ingested):
    server = ingested["server"]
    for kind in ("LABEL", "OVERVIEW"):
        r = requests.get(f"{server.dicomweb}/instances?ImageType={kind}")
        assert r.json() == [], kind
    sparse = {item["00081155"]["Value"][0] for r in ingested["responses"][1:] for item in r["00081199"]["Value"]}
    levels = [i for i in requests.get(f"{server.dicomweb}/instances?ImageType=VOLUME").json()
              if "00280008" in i and i["00080018"]["Value"][0] not in sparse]  # the slide's levels
    assert len(sparse) == 2
    assert len(levels) >= 2
    assert len({i["0020000E"]["Value"][0] for i in levels}) == 1  # the pyramid is still one slide
    meta = ingested["client"].retrieve_instance_metadata(levels[0]["0020000D"]["Value"][0],
                                                         levels[0]["0020000E"]["Value"][0],
                                                         levels[0]["00080018"]["Value"][0])
    assert meta["00120062"]["Value"] == ["YES"]  # PatientIdentityRemoved
    assert meta["00120064"]["Value"][0]["00080100"]["Value"] == ["113100"]  # Basic Application Confidentiality Profile
