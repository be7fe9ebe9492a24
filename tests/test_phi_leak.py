"""No PHI anywhere the archive keeps or serves: storage, SQLite files, outbox, logs, QIDO, metadata, retrieval.

A data set with a distinct marker in every attribute of PS3.15 Table E.1-1 (nested and
private too) and slides from the shared generator (PHI in headers, burned into LABEL and
OVERVIEW) go in through STOW-RS and the import command under the default policy; then
every byte the archive keeps or answers is searched for every marker.
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
from test_deid_profile import marked_dataset

REPO = Path(__file__).resolve().parent.parent
#: PHI the shared generator writes (headers and burned-in text).
SLIDE_PHI = [b"DOE^JANE", b"DOE", b"PAT-0001", b"ACC-0001", b"SSN-123-45-6789", b"St. Example", b"HOUSE",
             b"TECH^TERRY", b"PATH^PAULA", b"SN-000042", b"PATH-SCANNER-03", b"Main Street", b"555-0100",
             b"19700101", b"SLIDE-ACC-0001"]
MARKER = re.compile(rb"MK[0-9]{4}|1\.2\.826\.0\.1\.3680043\.10\.99[89]\.")


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
    imported = subprocess.run([sys.executable, "-m", "archive.cli", "import", str(marked_path),
                               "--data-dir", str(server.data_dir), "--config", str(server.config_path)],
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    return {"server": server, "client": client, "responses": responses, "import_output": imported.stdout + imported.stderr}


def _served(server, client) -> list[bytes]:
    """Everything the archive answers about what it holds."""
    out = []
    for level in ("studies", "series", "instances"):
        out.append(requests.get(f"{server.dicomweb}/{level}?includefield=all").content)
    for study in client.search_for_studies():
        uid = study["0020000D"]["Value"][0]
        out.append(requests.get(f"{server.dicomweb}/studies/{uid}/metadata").content)
        out.append(requests.get(f"{server.dicomweb}/studies/{uid}",
                                headers={"Accept": 'multipart/related; type="application/dicom"'}).content)
        for inst in client.search_for_instances(uid):
            se, sop = inst["0020000E"]["Value"][0], inst["00080018"]["Value"][0]
            base = f"{server.dicomweb}/studies/{uid}/series/{se}/instances/{sop}"
            meta = requests.get(f"{base}/metadata").json()[0]
            for tag, value in meta.items():
                if "BulkDataURI" in value:
                    out.append(requests.get(value["BulkDataURI"], headers={"Accept": "application/octet-stream"}).content)
    return out


def _kept(server) -> list[tuple[str, bytes]]:
    files = [p for p in server.data_dir.rglob("*") if p.is_file() and "secrets" not in p.parts]
    return [(str(p), p.read_bytes()) for p in files] + [("server log", server.log_path.read_bytes())]


def test_no_marker_and_no_slide_phi_anywhere(ingested):
    server, client = ingested["server"], ingested["client"]
    everything = _kept(server) + [("served", b) for b in _served(server, client)]
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
    levels = [i for i in requests.get(f"{server.dicomweb}/instances?ImageType=VOLUME").json()
              if "00280008" in i]  # the slide's levels (the marker data set has no frames)
    assert len(levels) >= 2
    assert len({i["0020000E"]["Value"][0] for i in levels}) == 1  # the pyramid is still one slide
    meta = ingested["client"].retrieve_instance_metadata(levels[0]["0020000D"]["Value"][0],
                                                         levels[0]["0020000E"]["Value"][0],
                                                         levels[0]["00080018"]["Value"][0])
    assert meta["00120062"]["Value"] == ["YES"]  # PatientIdentityRemoved
    assert meta["00120064"]["Value"][0]["00080100"]["Value"] == ["113100"]  # Basic Application Confidentiality Profile
