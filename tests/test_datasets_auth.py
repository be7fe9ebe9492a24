"""Datasets with authentication on: who may curate, who sees drafts and manifests, and what a
release's collection (``dataset:<id>:v<n>``) gives the principals that hold it."""
from __future__ import annotations

import pytest
import requests

from conftest import IDENTIFIED, Server
from slides import SlideSpec, make_slide
from test_auth import bearer, cli, stow, with_admin_key

CONFIG = IDENTIFIED + """
[auth]
enabled = true
"""
BODY = {"title": "Curated lung slides", "description": "Two generated slides curated by a collection's curator.",
        "license": "CC-BY-4.0", "contributors": [{"name": "Doe, Jane"}]}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    server = with_admin_key(tmp_path_factory.mktemp("dsauth"), CONFIG).start()
    for name, grant in (("curator", "lung:curator"), ("reader", "lung"), ("grantee", "dataset:lung-set:v1:read"),
                        ("other-curator", "other:curator")):
        setattr(server, name.replace("-", "_"), cli(server, "keys", "create", "--name", name, "--grant", grant))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slides(archive, tmp_path_factory) -> dict[str, dict]:
    out = {}
    for n, collection in enumerate(["lung", "lung", "other"]):
        paths = make_slide(tmp_path_factory.mktemp(f"slide{n}"), SlideSpec(
            width=512, height=512, seed=800 + n, patient_id=f"AUTHDS-{n}", label=False, overview=False))
        r = stow(archive, paths, collection, archive.admin)
        assert r.status_code == 200, r.text
        study = r.json()["00081190"]["Value"][0].rsplit("/studies/", 1)[1]
        (row,) = requests.get(f"{archive.dicomweb}/studies/{study}/series", headers={
            **bearer(archive.admin), "Accept": "application/dicom+json"}).json()
        out[f"{collection}{n}"] = {"study": study, "series": row["0020000E"]["Value"][0]}
    return out


def api(archive: Server, method: str, path: str, key: str | None, body=None) -> requests.Response:
    return requests.request(method, f"{archive.url}/api/datasets{path}", json=body,
                            headers=bearer(key) if key else {})


def readable(archive: Server, key: str, slide: dict) -> bool:
    r = requests.get(f"{archive.dicomweb}/studies/{slide['study']}/series/{slide['series']}/metadata",
                     headers={**bearer(key), "Accept": "application/dicom+json"})
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


@pytest.fixture(scope="module")
def released(archive, slides):
    lung = [slides["lung0"]["series"], slides["lung1"]["series"]]
    r = api(archive, "POST", "", archive.curator, dict(BODY, id="lung-set", series=lung))
    assert r.status_code == 201, r.text
    r = api(archive, "POST", "/lung-set/releases", archive.curator)
    assert r.status_code == 201, r.text
    return r.json()


def test_curating_needs_the_curator_role(archive, slides):
    assert api(archive, "POST", "", None, dict(BODY, id="anon-set")).status_code == 401
    r = api(archive, "POST", "", archive.reader, dict(BODY, id="reader-set"))
    assert r.status_code == 403 and "curator role" in r.json()["message"]
    assert api(archive, "GET", "/reader-set", archive.admin).status_code == 404  # nothing was made


def test_a_curator_may_include_only_series_of_their_collections(archive, slides, released):
    r = api(archive, "POST", "/lung-set/series", archive.curator, {"add": [slides["other2"]["series"]]})
    assert r.status_code == 404 and "no series" in r.json()["message"]
    r = api(archive, "POST", "", archive.other_curator, dict(BODY, id="mixed", series=[slides["lung0"]["series"]]))
    assert r.status_code == 404


def test_drafts_are_for_curators_releases_for_everyone(archive, slides, released):
    assert api(archive, "POST", "", archive.curator, dict(BODY, id="draft-set")).status_code == 201
    assert api(archive, "GET", "/draft-set", None).status_code == 404
    assert "definition" in api(archive, "GET", "/draft-set", archive.curator).json()
    public = api(archive, "GET", "", None).json()
    assert [d["id"] for d in public["datasets"]] == ["lung-set"] and "definition" not in public["datasets"][0]
    for path in ("/lung-set", "/lung-set/releases/1", "/lung-set/releases/1/jsonld", "/lung-set/releases/1/citation"):
        assert api(archive, "GET", path, None).status_code == 200, path
    assert api(archive, "GET", "/lung-set", "sa_not-a-real-key").status_code == 401


def test_the_manifest_is_for_grantees_and_curators(archive, released):
    assert api(archive, "GET", "/lung-set/releases/1/manifest", None).status_code == 401
    r = api(archive, "GET", "/lung-set/releases/1/manifest", archive.reader)
    assert r.status_code == 403 and "needs a grant" in r.json()["message"]
    for key in (archive.grantee, archive.curator, archive.admin):
        assert api(archive, "GET", "/lung-set/releases/1/manifest", key).status_code == 200


def test_the_release_collection_authorizes_its_slides_and_nothing_else(archive, slides, released):
    assert readable(archive, archive.grantee, slides["lung0"]) and readable(archive, archive.grantee, slides["lung1"])
    assert not readable(archive, archive.grantee, slides["other2"])
    r = api(archive, "POST", "/lung-set/releases/1/withdraw", archive.curator,
            {"reason": "consent withdrawn", "series": [slides["lung1"]["series"]]})
    assert r.status_code == 200, r.text
    assert readable(archive, archive.grantee, slides["lung0"])
    assert not readable(archive, archive.grantee, slides["lung1"])  # withdrawn: the grant no longer reaches it
    assert readable(archive, archive.reader, slides["lung1"])  # still in the archive for its own collection
