"""Applying for a release, the data access committee's decision, grants feeding authorization, and
downloading a granted release (tar/zip with Range, fetch manifest for dicomweb-client), against the
real server with authentication on and API keys."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import requests

from archive.audit.log import read_records
from conftest import REPO, Server
from slides import SlideSpec, make_slide
from test_auth import bearer, cli, stow, with_admin_key
from test_results_support import feature

CONFIG = """
[auth]
enabled = true
token_cache_seconds = 300
[datasets]
publisher = "Example Pathology Archive"
[[dimse.peer]]
ae_title = "USERS"
allow = ["query", "retrieve"]
"""
DATASET = {"id": "skin-2024", "title": "Synthetic skin biopsies", "description": "Two generated slides.",
           "license": "CC-BY-4.0", "collection": "skin", "contributors": [{"name": "Doe, Jane"}]}
APPLICATION = {"project": "Tumour detector", "purpose": "Train and validate a tumour detection model."}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = with_admin_key(tmp_path_factory.mktemp("dsaccess"), CONFIG)
    s.keys = {name: researcher(s, name, grant) for name, grant in (("alice", "scratch"), ("bob", "scratch"),
                                                                   ("carol", "scratch"), ("dac", "*:dac"))}
    s.start()
    s.subjects = {name: requests.get(f"{s.url}/api/whoami", headers=bearer(key)).json()["subject"]
                  for name, key in s.keys.items()}
    yield s
    s.stop()


def researcher(server: Server, name: str, grant: str = "scratch") -> str:
    """A new API key that reads only an unrelated collection (a key needs some grant)."""
    return cli(server, "keys", "create", "--name", name, "--grant", grant).splitlines()[0]


def api(server: Server, method: str, path: str, who: str | None, body=None, **kwargs) -> requests.Response:
    token = server.admin if who == "admin" else server.keys[who] if who else None
    headers = {**(bearer(token) if token else {}), **kwargs.pop("headers", {})}
    return requests.request(method, f"{server.url}/api/datasets{path}", json=body, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def release(server, tmp_path_factory) -> dict:
    """Two slides in collection skin, an annotation on the first, released as skin-2024:v1."""
    series = []
    for n in range(2):
        paths = make_slide(tmp_path_factory.mktemp(f"s{n}"), SlideSpec(width=512, height=384, seed=900 + n,
                                                                       label=False, overview=False))
        r = stow(server, paths, "skin", server.admin)
        assert r.status_code in (200, 202), r.text
        study = r.json()["00081190"]["Value"][0].rsplit("/studies/", 1)[1]
        (row,) = requests.get(f"{server.dicomweb}/studies/{study}/series", headers=bearer(server.admin)).json()
        series.append((study, row["0020000E"]["Value"][0]))
    r = requests.post(f"{server.url}/api/slides/{series[0][1]}/annotations", headers=bearer(server.admin),
                      json={"geojson": {"type": "FeatureCollection",
                                        "features": [feature("Point", [10 + i, 20], "Tumor") for i in range(4)]},
                            "algorithm": {"name": "cellfinder", "version": "1.0"}})
    assert r.status_code == 201, r.text
    assert api(server, "POST", "", "admin", DATASET).status_code == 201
    r = api(server, "POST", "/skin-2024/releases", "admin")
    assert r.status_code == 201, r.text
    manifest = api(server, "GET", "/skin-2024/releases/1/manifest", "admin").json()
    return {"series": series, "manifest": manifest}


def in_a_minute(seconds: int = 86400) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def granted(server: Server, who: str, expires: str, *members: str) -> dict:
    body = dict(APPLICATION, members=[server.subjects[m] for m in (members or (who,))])
    r = api(server, "POST", "/skin-2024/releases/1/applications", who, body)
    assert r.status_code == 201, r.text
    app = r.json()
    assert app["status"] == "pending" and r.headers["Location"].endswith(f"/api/datasets/applications/{app['id']}")
    r = api(server, "POST", f"/applications/{app['id']}/approve", "dac", {"expires": expires})
    assert r.status_code == 200, r.text
    return r.json()


def sees(server: Server, who: str, study: str) -> bool:
    r = requests.get(f"{server.dicomweb}/studies", params={"StudyInstanceUID": study},
                     headers=bearer(server.keys[who]))
    assert r.status_code in (200, 204), r.text
    return r.status_code == 200 and len(r.json()) == 1


def download(server: Server, who: str, fmt: str = "tar", **headers) -> requests.Response:
    return api(server, "GET", f"/skin-2024/releases/1/download.{fmt}", who, headers=headers)


def check_members(names_and_bytes: dict[str, bytes], manifest: dict) -> None:
    """Every available instance is in the layout with the manifest's size and SHA-256; SHA256SUMS holds."""
    folder = "skin-2024-v1"
    for item in manifest["items"]:
        data = names_and_bytes[f"{folder}/{item['study_uid']}/{item['series_uid']}/{item['sop_instance_uid']}.dcm"]
        assert len(data) == item["size"] and hashlib.sha256(data).hexdigest() == item["sha256"]
    sums = names_and_bytes[f"{folder}/SHA256SUMS"].decode().splitlines()
    assert len(sums) == len(names_and_bytes) - 3  # every file but README, manifest.json and SHA256SUMS itself
    for line in sums:
        digest, path = line.split("  ", 1)
        assert hashlib.sha256(names_and_bytes[f"{folder}/{path}"]).hexdigest() == digest
    assert json.loads(names_and_bytes[f"{folder}/manifest.json"])["items"] == manifest["items"]
    geo = [n for n in names_and_bytes if n.endswith(".geojson")]
    assert len(geo) == 1 and len(json.loads(names_and_bytes[geo[0]])["features"]) == 4


def test_a_granted_researcher_downloads_what_the_manifest_says_and_resumes_to_identical_bytes(server, release):
    study = release["series"][0][0]
    assert download(server, "alice").status_code == 403
    assert not sees(server, "alice", study)
    granted(server, "alice", in_a_minute())
    assert sees(server, "alice", study) and not sees(server, "bob", study)
    r = download(server, "alice")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-tar"
    whole = r.content
    assert int(r.headers["Content-Length"]) == len(whole)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    check_members(files, release["manifest"])
    half = len(whole) // 2 + 1  # resumed in the middle of some member
    r = download(server, "alice", Range=f"bytes={half}-", **{"If-Range": r.headers["ETag"]})
    assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes {half}-{len(whole) - 1}/{len(whole)}"
    assert whole[:half] + r.content == whole
    r = download(server, "alice", Range="bytes=100-1123")
    assert r.status_code == 206 and r.content == whole[100:1124]
    again = download(server, "alice")  # the same archive, byte for byte, every time
    assert again.content == whole and again.headers["ETag"] == r.headers["ETag"]
    r = download(server, "alice", Range=f"bytes={half}-", **{"If-Range": '"another-release"'})
    assert r.status_code == 200 and r.content == whole  # a changed archive is sent whole, not spliced


def test_zip_download_is_a_valid_zip_with_the_manifest_checksums_and_resumes(server, release):
    granted(server, "carol", in_a_minute())
    r = download(server, "carol", "zip")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    whole = r.content
    with zipfile.ZipFile(io.BytesIO(whole)) as z:
        assert z.testzip() is None  # every CRC-32 right
        files = {name: z.read(name) for name in z.namelist()}
    check_members(files, release["manifest"])
    third = len(whole) // 3
    r = download(server, "carol", "zip", Range=f"bytes={third}-")
    assert r.status_code == 206 and whole[:third] + r.content == whole


def test_a_range_beyond_the_end_is_416_with_the_size(server, release):
    granted(server, "bob", in_a_minute(), "bob")
    size = int(download(server, "bob").headers["Content-Length"])
    r = download(server, "bob", Range=f"bytes={size}-")
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    assert f"the archive is {size} bytes" in r.json()["message"]
    assert download(server, "bob", Range=f"bytes={size - 10}-").status_code == 206


def test_an_expired_grant_stops_access_at_once(server, release):
    study = release["series"][1][0]
    # a short-lived grant for a fresh key; the credential cache (300 s) does not keep it alive
    key = researcher(server, "dave")
    dave = requests.get(f"{server.url}/api/whoami", headers=bearer(key)).json()["subject"]
    server.keys["dave"] = key
    r = api(server, "POST", "/skin-2024/releases/1/applications", "dave", dict(APPLICATION, members=[dave]))
    expiry = in_a_minute(5)
    assert api(server, "POST", f"/applications/{r.json()['id']}/approve", "dac", {"expires": expiry}).status_code == 200
    assert sees(server, "dave", study) and download(server, "dave", Range="bytes=0-0").status_code == 206
    while datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") <= expiry:
        time.sleep(0.5)
    assert not sees(server, "dave", study)
    assert download(server, "dave").status_code == 403
    assert api(server, "GET", f"/applications/{r.json()['id']}", "dave").json()["state"] == "expired"
    assert sees(server, "carol", study)  # other grants untouched


def test_a_revoked_grant_stops_access_at_once_and_every_step_is_audited(server, release):
    study = release["series"][0][0]
    key = researcher(server, "erin")
    erin = requests.get(f"{server.url}/api/whoami", headers=bearer(key)).json()["subject"]
    server.keys["erin"], server.subjects["erin"] = key, erin
    app = granted(server, "erin", in_a_minute())
    assert sees(server, "erin", study)
    r = api(server, "POST", f"/applications/{app['id']}/revoke", "erin", {"reason": "self-service"})
    assert r.status_code == 403  # a member cannot revoke (nor approve): that is the committee's
    r = api(server, "POST", f"/applications/{app['id']}/revoke", "dac", {"reason": "project ended"})
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_grants"] == 1
    assert not sees(server, "erin", study) and download(server, "erin").status_code == 403
    grants = api(server, "GET", "/grants", "erin").json()["grants"]
    assert [g["active"] for g in grants] == [False] and grants[0]["revoked_at"]
    deadline = time.time() + 10
    text = ""
    while time.time() < deadline and "grants of dataset:skin-2024:v1 revoked" not in text:
        time.sleep(0.3)
        text = json.dumps(list(read_records(server.data_dir / "audit")))
    for step in (f"application {app['id']} for skin-2024:v1", f"application {app['id']} approved",
                 "grants of dataset:skin-2024:v1 revoked", "revoke app-", "skin-2024:v1 as tar"):
        assert step in text, step


@pytest.mark.filterwarnings("ignore:No bulk data URI handler")  # wsidicom reads metadata without bulk data
def test_dicomweb_client_and_wsidicom_fetch_the_release_from_the_fetch_manifest(server, release):
    from dicomweb_client.api import DICOMwebClient

    app = granted(server, "alice", in_a_minute())
    assert app["status"] == "approved"
    plan = api(server, "GET", "/skin-2024/releases/1/fetch", "alice").json()
    assert plan["release"] == "skin-2024:v1" and plan["downloads"]["tar"].endswith("/download.tar")
    client = DICOMwebClient(url=plan["dicomweb"], headers=bearer(server.keys["alice"]))
    want = {i["sop_instance_uid"] for i in release["manifest"]["items"]}
    got = set()
    for series in plan["series"]:
        for instance in series["instances"]:
            ds = client.retrieve_instance(series["study_uid"], series["series_uid"], instance["sop_instance_uid"])
            got.add(str(ds.SOPInstanceUID))
    assert got == want
    from wsidicom import WsiDicom, WsiDicomWebClient

    slide = next(s for s in plan["series"] if s["kind"] == "slide")
    with WsiDicom.open_web(WsiDicomWebClient(client), slide["study_uid"], slide["series_uid"]) as wsi:
        assert wsi.levels[0].size.width == 512 and wsi.read_region((0, 0), 0, (64, 64)).size == (64, 64)
    paths = {f["path"] for f in plan["layout"]["files"]}
    assert {"README.txt", "manifest.json", "SHA256SUMS"} < paths
    assert api(server, "GET", "/skin-2024/releases/1/fetch", None).status_code == 401


def test_visas_are_signed_controlled_access_grants_of_the_callers_grants(server, release):
    granted(server, "alice", in_a_minute())
    r = api(server, "GET", "/visas", "alice")
    assert r.status_code == 200
    tokens = r.json()["ga4gh_passport_v1"]
    assert tokens
    header = jwt.get_unverified_header(tokens[0])
    assert header["jku"] == f"{server.url}/api/datasets/visas/jwks.json"
    keys = requests.get(header["jku"]).json()  # public
    key = jwt.PyJWK(next(k for k in keys["keys"] if k["kid"] == header["kid"]))
    claims = jwt.decode(tokens[0], key.key, algorithms=[header["alg"]], options={"verify_aud": False})
    visa = claims["ga4gh_visa_v1"]
    assert claims["sub"] == server.subjects["alice"] and visa["type"] == "ControlledAccessGrants"
    assert visa["value"] == f"{server.url}/datasets/skin-2024/v1" and visa["by"] == "dac"
    assert claims["exp"] <= time.time() + 3600 + 5
    assert api(server, "GET", "/visas", "bob").json()["ga4gh_passport_v1"] != tokens


@pytest.mark.parametrize("path, body, status, message", [
    ("/no-such-set/releases/1/applications", dict(APPLICATION, members=["x"]), 404, "no release"),
    ("/skin-2024/releases/9/applications", dict(APPLICATION, members=["x"]), 404, "no release"),
    ("/skin-2024/releases/1/applications", {"purpose": "p", "members": ["x"]}, 400, "project is required"),
    ("/skin-2024/releases/1/applications", {"project": "p", "purpose": "p"}, 400, "members is required"),
    ("/skin-2024/releases/1/applications", {"project": "p", "purpose": " ", "members": ["x"]}, 400,
     "purpose is required"),
    ("/skin-2024/releases/1/applications", dict(APPLICATION, members=["x"], budget=1), 400, "unknown field"),
])
def test_bad_applications_are_4xx_and_change_nothing(server, release, path, body, status, message):
    before = api(server, "GET", "/applications", "dac").json()["applications"]
    r = api(server, "POST", path, "bob", body)
    assert r.status_code == status and message in r.json()["message"], r.text
    assert api(server, "GET", "/applications", "dac").json()["applications"] == before


def test_bad_decisions_are_4xx_and_grant_nothing(server, release):
    r = api(server, "POST", "/skin-2024/releases/1/applications", "bob",
            dict(APPLICATION, members=[server.subjects["bob"], server.subjects["carol"]]))
    app = r.json()["id"]
    for who, body, status, message in [
            ("bob", {"expires": in_a_minute()}, 403, "dac role"),                # not on the committee
            ("dac", {}, 400, "expires is required"),
            ("dac", {"expires": "2020-01-01"}, 400, "in the future"),
            ("dac", {"expires": "next week"}, 400, "expires must be a date"),
            ("dac", {"expires": in_a_minute(), "grant": "all"}, 400, "unknown field")]:
        r = api(server, "POST", f"/applications/{app}/approve", who, body)
        assert r.status_code == status and message in r.json()["message"], (body, r.text)
    r = api(server, "POST", f"/applications/{app}/reject", "dac", {})
    assert r.status_code == 400 and "reason is required" in r.json()["message"]
    assert api(server, "GET", f"/applications/{app}", "bob").json()["status"] == "pending"
    assert api(server, "POST", "/applications/app-0000000000000000/approve", "dac",
               {"expires": in_a_minute()}).status_code == 404
    assert api(server, "POST", "/applications/nonsense/approve", "dac", {"expires": in_a_minute()}).status_code == 400
    r = api(server, "POST", f"/applications/{app}/reject", "dac", {"reason": "purpose too vague"})
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["reason"] == "purpose too vague"
    r = api(server, "POST", f"/applications/{app}/approve", "dac", {"expires": in_a_minute()})
    assert r.status_code == 409 and "rejected already" in r.json()["message"]
    assert not [g for g in api(server, "GET", "/grants", "dac", params={"release": "skin-2024:v1"}).json()["grants"]
                if g["application_id"] == app]
    own = api(server, "POST", "/skin-2024/releases/1/applications", "dac",
              dict(APPLICATION, members=[server.subjects["dac"]])).json()["id"]
    r = api(server, "POST", f"/applications/{own}/approve", "dac", {"expires": in_a_minute()})
    assert r.status_code == 403 and "own application" in r.json()["message"]


def run_download(server: Server, who: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", "dataset", "download", "skin-2024", "1",
                           "--url", server.url, "--output", str(tmp_path / "skin.tar"), *args],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "SLIDEARCHIVE_TOKEN":
                                                                         server.keys[who]})


def test_the_command_line_downloads_resumes_and_verifies(server, release, tmp_path):
    granted(server, "alice", in_a_minute())
    whole = download(server, "alice")
    # a download interrupted halfway: the part and the ETag it was given
    (tmp_path / "skin.tar.part").write_bytes(whole.content[: len(whole.content) // 2])
    (tmp_path / "skin.tar.etag").write_text(whole.headers["ETag"])
    done = run_download(server, "alice", tmp_path, "--extract", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "skin.tar").read_bytes() == whole.content and not (tmp_path / "skin.tar.part").exists()
    assert "files verified against skin-2024:v1" in done.stdout
    assert "\r" not in done.stderr and "100%" in done.stderr  # progress as plain lines off a terminal
    folder = tmp_path / "out" / "skin-2024-v1"
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    item = release["manifest"]["items"][0]
    assert (folder / item["study_uid"] / item["series_uid"] / f"{item['sop_instance_uid']}.dcm").stat().st_size \
        == item["size"]
    # a part that does not hold the archive's bytes fails the check, and says so
    with tarfile.open(fileobj=io.BytesIO(whole.content)) as tar:
        first = next(m for m in tar.getmembers() if m.name.endswith(".dcm"))
    spoiled = bytearray(whole.content[: first.offset_data + first.size])
    spoiled[first.offset_data + 200] ^= 0xFF
    (tmp_path / "skin.tar").unlink()
    (tmp_path / "skin.tar.part").write_bytes(spoiled)
    (tmp_path / "skin.tar.etag").write_text(whole.headers["ETag"])
    bad = run_download(server, "alice", tmp_path)
    assert bad.returncode == 1 and f"{first.name}: checksum does not match" in bad.stderr
    server.keys.setdefault("frank", researcher(server, "frank"))
    refused = run_download(server, "frank", tmp_path / "elsewhere")
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr and "needs a grant" in refused.stderr


def c_find_studies(server: Server, key: str) -> set[str]:
    """Study Instance UIDs a C-FIND finds on an association whose user identity is the API key."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    from test_auth_dimse import SCP_AE, _identity

    ae = AE(ae_title="USERS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=SCP_AE, ext_neg=[_identity(2, "researcher", key)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    found = {str(ds.StudyInstanceUID) for status, ds in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
             if status and status.Status in (0xFF00, 0xFF01) and ds is not None}
    assoc.release()
    return found


def searched(server: Server, key: str) -> set[str]:
    r = requests.get(f"{server.url}/api/search", params={"size": 100}, headers=bearer(key))
    assert r.status_code == 200, r.text
    return {h["study_uid"] for h in r.json()["hits"]}


def test_every_door_follows_the_grant(server, release):
    """QIDO-RS, frames, /api/search and C-FIND: nothing before the grant, the release with it, nothing once revoked."""
    studies = {study for study, _ in release["series"]}
    study, series = release["series"][0]
    key = researcher(server, "gina")
    subject = requests.get(f"{server.url}/api/whoami", headers=bearer(key)).json()["subject"]
    server.keys["gina"], server.subjects["gina"] = key, subject
    sop = next(i["sop_instance_uid"] for i in release["manifest"]["items"] if i["series_uid"] == series)
    frame = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/1"

    def doors() -> tuple[bool, bool, set[str], set[str]]:
        return (sees(server, "gina", study), requests.get(frame, headers=bearer(key)).status_code == 200,
                searched(server, key) & studies, c_find_studies(server, key) & studies)

    assert doors() == (False, False, set(), set())
    app = granted(server, "gina", in_a_minute())
    deadline = time.time() + 30  # the release's series reach the search index through the outbox
    while searched(server, key) & studies != studies and time.time() < deadline:
        time.sleep(0.3)
    assert doors() == (True, True, studies, studies)
    assert api(server, "POST", f"/applications/{app['id']}/revoke", "dac", {"reason": "ended"}).status_code == 200
    assert doors() == (False, False, set(), set())


def test_another_archive_honours_the_visa(server, release, tmp_path_factory):
    """A second archive that trusts this one's visas ([[auth.visa_issuer]] with its jku) lets the grantee,
    logging in there through a real OIDC provider whose token carries the visa, read the mapped collection."""
    from oidc_providers import MockOAuth2

    granted(server, "alice", in_a_minute())
    visa = api(server, "GET", "/visas", "alice").json()["ga4gh_passport_v1"][0]
    value = jwt.decode(visa, options={"verify_signature": False})["ga4gh_visa_v1"]["value"]
    claims = {"sub": "alice-elsewhere", "aud": ["slidearchive"]}
    oidc = MockOAuth2(tmp_path_factory.mktemp("visa-oidc"), [{"issuerId": "test", "requestMappings": [
        {"requestParam": "scope", "match": "passport", "claims": dict(claims, ga4gh_passport_v1=[visa])},
        {"requestParam": "scope", "match": "plain", "claims": claims}]}])
    other = None
    try:
        config = (f'[auth]\nenabled = true\n[[auth.issuer]]\nissuer = "{oidc.issuer()}"\naudience = ["slidearchive"]\n'
                  f'[[auth.visa_issuer]]\nissuer = "{server.url}"\njku = ["{server.url}/api/datasets/visas/jwks.json"]\n'
                  f'collections = {{ "{value}" = "mirror" }}\n')
        other = with_admin_key(tmp_path_factory.mktemp("other-archive"), config).start()
        paths = make_slide(tmp_path_factory.mktemp("mirror"), SlideSpec(width=256, height=256, seed=990, label=False,
                                                                      overview=False))
        r = stow(other, paths, "mirror", other.admin)
        assert r.status_code in (200, 202), r.text
        study = r.json()["00081190"]["Value"][0].rsplit("/studies/", 1)[1]

        def found(scope: str) -> int:
            r = requests.get(f"{other.dicomweb}/studies", params={"StudyInstanceUID": study},
                             headers=bearer(oidc.token(scope)))
            assert r.status_code in (200, 204), r.text
            return len(r.json()) if r.status_code == 200 else 0

        assert found("passport") == 1 and found("plain") == 0
    finally:
        if other is not None:
            other.stop()
        oidc.stop()


def dataset_cli(server: Server, who: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", "dataset", *args, "--url", server.url, "--json"],
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "SLIDEARCHIVE_TOKEN": server.keys[who]})


def test_the_command_line_applies_and_decides_through_the_api(server, release):
    key = researcher(server, "hana")
    subject = requests.get(f"{server.url}/api/whoami", headers=bearer(key)).json()["subject"]
    server.keys["hana"] = key
    applied = dataset_cli(server, "hana", "apply", "skin-2024", "1", "--project", "Reader study",
                          "--purpose", "Compare pathologists with a model.", "--member", subject)
    assert applied.returncode == 0, applied.stderr
    app = json.loads(applied.stdout)["id"]
    refused = dataset_cli(server, "hana", "approve", app, "--expires", in_a_minute())
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr and "dac role" in refused.stderr
    approved = dataset_cli(server, "dac", "approve", app, "--expires", in_a_minute(), "--reason", "fine")
    assert approved.returncode == 0 and json.loads(approved.stdout)["status"] == "approved", approved.stderr
    grants = json.loads(dataset_cli(server, "hana", "grants", "--active").stdout)["grants"]
    assert [(g["subject"], g["release_id"]) for g in grants] == [(subject, "skin-2024:v1")]
    revoked = dataset_cli(server, "dac", "revoke", app, "--reason", "study over")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["state"] == "revoked", revoked.stderr
    assert json.loads(dataset_cli(server, "hana", "grants", "--active").stdout)["grants"] == []
