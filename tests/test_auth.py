"""Authentication and per-collection authorization over HTTP, against a real OIDC provider
(mock-oauth2-server), a loopback visa issuer and the real server: every door, and the attacks."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import urllib.parse

import pytest
import requests

from conftest import IDENTIFIED, REPO, Server
from oidc_providers import LoopbackIssuer, MockOAuth2
from slides import SlideSpec, make_slide
from test_results_support import feature

REFUSED = "the credentials were not accepted"
DATASET_B = "https://doi.example/dataset-b"
DATASET_C = "https://doi.example/dataset-c"


def cli(server: Server, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "archive.cli", *args, "--data-dir", str(server.data_dir),
                             "--config", str(server.config_path)], cwd=REPO, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def visas():
    """The trusted visa issuer, and one that is not configured."""
    trusted, stranger = LoopbackIssuer(), LoopbackIssuer()
    yield trusted, stranger
    trusted.stop()
    stranger.stop()


@pytest.fixture(scope="module")
def oidc(tmp_path_factory, visas):
    trusted, stranger = visas

    def mapping(scope: str, **claims) -> dict:
        return {"requestParam": "scope", "match": scope,
                "claims": {"sub": f"user-{scope}", "aud": ["slidearchive"], **claims}}

    callbacks = [
        {"issuerId": "test", "requestMappings": [
            mapping("coll-a", collections=["a"]),
            mapping("coll-a-write", collections=["a", "a:write"]),
            mapping("admin", collections=["*:admin"]),
            mapping("wrong-aud", aud=["another-service"], collections=["a"]),
            mapping("passport", collections=[], ga4gh_passport_v1=[
                trusted.visa(DATASET_B),                              # grants b
                stranger.visa(DATASET_C),                             # issuer not configured
                trusted.visa(DATASET_C, jku=stranger.jwks_url),       # jku not on the allow-list
                trusted.visa(DATASET_C, exp_in=-3600),                # expired
                trusted.visa(DATASET_C, conditions=[[{"type": "AffiliationAndRole"}]]),  # conditional
            ]),
        ]},
        {"issuerId": "expired", "tokenExpiry": -120,
         "requestMappings": [mapping("coll-a", collections=["a"])]},
        {"issuerId": "untrusted", "requestMappings": [mapping("coll-a", collections=["a"])]},
    ]
    server = MockOAuth2(tmp_path_factory.mktemp("oidc"), callbacks)
    yield server
    server.stop()


def auth_config(oidc: MockOAuth2, visas, loopback: LoopbackIssuer, extra: str = "") -> str:
    trusted, _ = visas
    issuers = "".join(f'[[auth.issuer]]\nissuer = "{url}"\naudience = ["slidearchive"]\n'
                      for url in (oidc.issuer("test"), oidc.issuer("expired"), loopback.url))
    return IDENTIFIED + f"""
[auth]
enabled = true
token_cache_seconds = 1
cors_origins = ["http://viewer.example"]
{extra}
{issuers}
[[auth.visa_issuer]]
issuer = "{trusted.url}"
jku = ["{trusted.jwks_url}"]
collections = {{ "{DATASET_B}" = "b", "{DATASET_C}" = "c" }}
"""


@pytest.fixture(scope="module")
def loopback():
    issuer = LoopbackIssuer()
    yield issuer
    issuer.stop()


def with_admin_key(root, config: str) -> Server:
    """A server (not started) whose data directory already holds an administrator key (``server.admin``)."""
    server = Server(root, config)
    server.data_dir.mkdir(parents=True)
    server.admin = cli(server, "keys", "create", "--name", "test admin", "--admin")
    return server


@pytest.fixture(scope="module")
def archive(tmp_path_factory, oidc, visas, loopback):
    server = with_admin_key(tmp_path_factory.mktemp("auth"), auth_config(oidc, visas, loopback)).start()
    yield server
    server.stop()


def stow(server: Server, paths, collection: str | None, token: str) -> requests.Response:
    boundary = "authboundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    query = f"?collection={collection}" if collection else ""
    return requests.post(f"{server.dicomweb}/studies{query}", data=body, headers={
        **bearer(token), "Accept": "application/dicom+json",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


@pytest.fixture(scope="module")
def studies(archive, tmp_path_factory) -> dict[str, list[dict]]:
    """Two studies in collection a, one in b, one in c: {collection: [{study, series, sop, paths}]}."""
    out: dict[str, list[dict]] = {}
    for n, collection in enumerate(["a", "a", "b", "c"]):
        paths = make_slide(tmp_path_factory.mktemp(f"slide{n}"),
                           SlideSpec(width=512, height=512, seed=300 + n, patient_id=f"AUTH-{n}",
                                     label=False, overview=False))
        r = stow(archive, paths, collection, archive.admin)
        assert r.status_code == 200, r.text
        instances = r.json()["00081199"]["Value"]
        url = instances[0]["00081190"]["Value"][0]
        study, series, sop = (url.split("/studies/")[1].split("/series/")[0], url.split("/series/")[1].split("/")[0],
                              url.rsplit("/", 1)[1])
        out.setdefault(collection, []).append({"study": study, "series": series, "sop": sop, "paths": paths})
    return out


def qido_studies(server: Server, token: str | None, **params) -> requests.Response:
    headers = {"Accept": "application/dicom+json", **(bearer(token) if token else {})}
    return requests.get(f"{server.dicomweb}/studies", params=params, headers=headers)


def study_uids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [row["0020000D"]["Value"][0] for row in response.json()]


# --- authentication ------------------------------------------------------------------------


def _hs256_with_public_key(token: str, public_pem: bytes) -> str:
    """The classic algorithm-confusion forgery: the claims re-signed with HMAC keyed by the public key."""
    _, payload, _ = token.split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "test"}).encode()).rstrip(b"=")
    signing_input = header + b"." + payload.encode()
    signature = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def _alg_none(token: str) -> str:
    _, payload, _ = token.split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}."


def _bad_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    flipped = ("A" if signature[10] != "A" else "B")
    return f"{head}.{payload}.{signature[:10]}{flipped}{signature[11:]}"


def _public_pem(oidc: MockOAuth2) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = json.loads(json.dumps(oidc.jwks()["keys"][0]))
    public = __import__("jwt").algorithms.RSAAlgorithm.from_jwk(key)
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_no_credentials_is_401_with_a_challenge(archive, studies):
    r = qido_studies(archive, None)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "authentication required" in r.json()["message"]


@pytest.mark.parametrize("forge", ["garbage", "three.part.garbage", "bad-signature", "alg-none", "hs256-public-key",
                                   "wrong-audience", "untrusted-issuer", "expired", "future-nbf", "unknown-api-key",
                                   "basic-not-a-key"])
def test_bad_tokens_are_refused_without_detail(archive, studies, oidc, loopback, forge):
    good = oidc.token("coll-a")
    now = int(time.time())
    token = {
        "garbage": "not-a-token",
        "three.part.garbage": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        "bad-signature": _bad_signature(good),
        "alg-none": _alg_none(good),
        "hs256-public-key": _hs256_with_public_key(good, _public_pem(oidc)),
        "wrong-audience": oidc.token("wrong-aud"),
        "untrusted-issuer": oidc.token("coll-a", "untrusted"),
        "expired": oidc.token("coll-a", "expired"),
        "future-nbf": loopback.sign({"iss": loopback.url, "sub": "x", "aud": "slidearchive", "exp": now + 600,
                                     "nbf": now + 300, "collections": ["a"]}),
        "unknown-api-key": "sa_0123456789ab_" + "A" * 43,
        "basic-not-a-key": None,
    }[forge]
    headers = {"Accept": "application/dicom+json"}
    if token is None:
        headers["Authorization"] = "Basic " + base64.b64encode(b"alice:password").decode()
    else:
        headers.update(bearer(token))
    r = requests.get(f"{archive.dicomweb}/studies", headers=headers)
    assert r.status_code == 401, (forge, r.text)
    assert r.json()["message"] == REFUSED
    # the frame fast path refuses it the same way
    a = studies["a"][0]
    r = requests.get(f"{archive.dicomweb}/studies/{a['study']}/series/{a['series']}/instances/{a['sop']}/frames/1",
                     headers=headers)
    assert r.status_code == 401 and r.json()["message"] == REFUSED


def test_a_refused_token_is_a_security_alert(archive, studies):
    requests.get(f"{archive.dicomweb}/studies", headers=bearer("sa_0123456789ab_" + "B" * 43))
    assert _wait_audit(archive, lambda m: m["event"] == "SecurityAlert"
                       and "unknown or revoked API key" in json.dumps(m))


def test_unknown_kid_refetches_the_issuers_keys(archive, studies, loopback):
    from archive.auth.oidc import REFRESH_SECONDS

    loopback.add_key("rotated")
    time.sleep(REFRESH_SECONDS + 0.5)  # refetches on an unknown kid are rate-limited
    now = int(time.time())
    token = loopback.sign({"iss": loopback.url, "sub": "rotating", "aud": "slidearchive", "exp": now + 600,
                           "collections": ["a"]}, kid="rotated")
    assert sorted(study_uids(qido_studies(archive, token))) == sorted(s["study"] for s in studies["a"])


def test_revoked_api_key_stops_working_within_the_cache_time(archive, studies):
    key = cli(archive, "keys", "create", "--name", "pipeline", "--grant", "a")
    assert len(study_uids(qido_studies(archive, key))) == 2
    key_id = key.split("_")[1]
    cli(archive, "keys", "revoke", key_id)
    assert "revoked" in cli(archive, "keys", "list")
    time.sleep(1.5)  # [auth] token_cache_seconds = 1
    r = qido_studies(archive, key)
    assert r.status_code == 401 and r.json()["message"] == REFUSED


def test_basic_authentication_with_an_api_key(archive, studies):
    key = cli(archive, "keys", "create", "--name", "basic", "--grant", "b")
    r = requests.get(f"{archive.dicomweb}/studies", auth=("anyone", key), headers={"Accept": "application/dicom+json"})
    assert study_uids(r) == [studies["b"][0]["study"]]


def test_a_token_that_expires_is_not_trusted_past_its_expiry(archive, studies, loopback):
    """Cached only until its exp (+ the clock leeway): the next request after that is refused."""
    from archive.auth.oidc import LEEWAY

    exp = int(time.time()) - LEEWAY + 2
    token = loopback.sign({"iss": loopback.url, "sub": "short", "aud": "slidearchive", "exp": exp,
                           "collections": ["a"]})
    a = studies["a"][0]
    with requests.get(f"{archive.dicomweb}/studies/{a['study']}", headers={**bearer(token),
                      "Accept": 'multipart/related; type="application/dicom"'}, stream=True) as r:
        assert r.status_code == 200
        time.sleep(3)  # the token expires mid-download: the download goes on
        assert len(r.content) > 10000
    r = qido_studies(archive, token)
    assert r.status_code == 401


# --- authorization: QIDO ---------------------------------------------------------------------


def test_qido_shows_only_the_principals_collections(archive, studies, oidc):
    token = oidc.token("coll-a")
    a = sorted(s["study"] for s in studies["a"])
    assert sorted(study_uids(qido_studies(archive, token))) == a
    # paging as if the other studies did not exist
    first = study_uids(qido_studies(archive, token, limit=1))
    second = study_uids(qido_studies(archive, token, limit=1, offset=1))
    assert sorted(first + second) == a
    assert study_uids(qido_studies(archive, token, limit=10, offset=2)) == []
    # counts of series and instances per study are the study's own
    for s in studies["a"]:
        rows = qido_studies(archive, token, StudyInstanceUID=s["study"]).json()
        assert rows[0]["00201208"]["Value"] == [len(s["paths"])]


@pytest.mark.parametrize("params", [{"PatientID": "*"}, {"PatientName": "*"}, {"includefield": "all"},
                                    {"PatientID": "AUTH-2"}, {"fuzzymatching": "true", "PatientName": "D"}])
def test_qido_wildcards_and_includefield_do_not_reach_other_collections(archive, studies, oidc, params):
    token = oidc.token("coll-a")
    found = set(study_uids(qido_studies(archive, token, **params)))
    assert found <= {s["study"] for s in studies["a"]}


def test_qido_by_uid_of_another_collection_is_empty(archive, studies, oidc):
    token = oidc.token("coll-a")
    b = studies["b"][0]
    assert study_uids(qido_studies(archive, token, StudyInstanceUID=b["study"])) == []
    r = requests.get(f"{archive.dicomweb}/studies/{b['study']}/series", headers={**bearer(token),
                     "Accept": "application/dicom+json"})
    assert r.status_code == 200 and r.json() == []
    r = requests.get(f"{archive.dicomweb}/instances", params={"SeriesInstanceUID": b["series"]},
                     headers={**bearer(token), "Accept": "application/dicom+json"})
    assert r.json() == []


# --- authorization: WADO-RS ------------------------------------------------------------------


def _wado_urls(s: dict) -> list[tuple[str, str]]:
    base = f"/studies/{s['study']}"
    inst = f"{base}/series/{s['series']}/instances/{s['sop']}"
    return [(base, 'multipart/related; type="application/dicom"'),
            (f"{base}/series/{s['series']}", 'multipart/related; type="application/dicom"'),
            (f"{base}/metadata", "application/dicom+json"),
            (f"{inst}/metadata", "application/dicom+json"),
            (f"{inst}/frames/1", "application/octet-stream"),
            (f"{inst}/frames/1,2", 'multipart/related; type="application/octet-stream"'),
            (f"{inst}/bulkdata/7FE00010", "application/octet-stream"),
            (f"{inst}/rendered", "image/jpeg"),
            (f"{inst}/frames/1/rendered", "image/jpeg"),
            (f"{inst}/thumbnail", "image/jpeg"),
            (f"{base}/thumbnail", "image/jpeg")]


def test_wado_answers_what_the_principal_may_read(archive, studies, oidc):
    token = oidc.token("coll-a")
    for path, accept in _wado_urls(studies["a"][0]):
        r = requests.get(f"{archive.dicomweb}{path}", headers={**bearer(token), "Accept": accept})
        assert r.status_code == 200, (path, r.status_code, r.text[:200])


def test_wado_of_another_collection_is_404_not_403(archive, studies, oidc):
    token = oidc.token("coll-a")
    b = studies["b"][0]
    for path, accept in _wado_urls(b):
        r = requests.get(f"{archive.dicomweb}{path}", headers={**bearer(token), "Accept": accept})
        assert r.status_code == 404, (path, r.status_code)
        assert b["study"] not in r.text and b["sop"] not in r.text
    assert _wait_audit(archive, lambda m: m["event"] == "SecurityAlert" and m.get("study") == b["study"])


def _wait_audit(server: Server, matches) -> bool:
    deadline = time.time() + 10
    while time.time() < deadline:
        records = [json.loads(line) for f in sorted((server.data_dir / "audit").glob("*.jsonl"))
                   for line in f.read_text().splitlines()]
        if any(matches(r) for r in records):
            return True
        time.sleep(0.3)
    return False


@pytest.mark.parametrize("uid", ["1' OR '1'='1", "..%2F..%2Fcatalog.sqlite", "1.2.3;DROP TABLE study",
                                 "%2e%2e%2f%2e%2e%2fsecrets"])
def test_injection_and_traversal_uids_are_refused(archive, studies, oidc, uid):
    token = oidc.token("coll-a")
    for path in (f"/studies/{uid}/metadata", f"/studies/{uid}/series/{uid}/instances/{uid}/frames/1"):
        r = requests.get(f"{archive.dicomweb}{path}", headers={**bearer(token), "Accept": "*/*"})
        assert r.status_code in (400, 404), (path, r.status_code)
    r = qido_studies(archive, token, StudyInstanceUID=urllib.parse.unquote(uid))
    assert r.status_code == 400 or r.json() == []


# --- authorization: STOW-RS and DELETE ---------------------------------------------------------


def test_stow_needs_write_on_the_target_collection(archive, studies, oidc, tmp_path):
    paths = make_slide(tmp_path / "new", SlideSpec(width=256, height=256, seed=399, patient_id="AUTH-NEW",
                                                   label=False, overview=False))
    assert stow(archive, paths, None, oidc.token("coll-a")).status_code == 403  # read only
    assert stow(archive, paths, "b", oidc.token("coll-a-write")).status_code == 403
    r = stow(archive, paths, None, oidc.token("coll-a-write"))  # its only writable collection
    assert r.status_code == 200, r.text
    assert len(study_uids(qido_studies(archive, oidc.token("coll-a")))) == 3


def test_stow_cannot_pull_another_collections_study_into_its_own(archive, studies, oidc, tmp_path):
    """Instances of a study held in b, sent by a writer of a only: refused, b's study stays out of a."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(studies["b"][0]["paths"][0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "intruder.dcm"
    ds.save_as(path)
    r = stow(archive, [path], "a", oidc.token("coll-a-write"))
    assert r.status_code == 409, r.text
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0124]
    assert studies["b"][0]["study"] not in study_uids(qido_studies(archive, oidc.token("coll-a")))


def test_delete_needs_the_delete_role(archive, studies, oidc):
    a = studies["a"][1]
    url = f"{archive.dicomweb}/studies/{a['study']}/series/{a['series']}/instances/{a['sop']}"
    assert requests.delete(url, headers=bearer(oidc.token("coll-a-write"))).status_code == 403
    b = studies["b"][0]
    key = cli(archive, "keys", "create", "--name", "deleter", "--grant", "a:delete")
    gone = f"{archive.dicomweb}/studies/{b['study']}"
    assert requests.delete(gone, headers=bearer(key)).status_code == 404  # b is not even visible
    assert requests.delete(url, headers=bearer(key)).status_code == 204


# --- authorization: search, results, GeoJSON and masks --------------------------------------------


def test_search_and_its_facets_see_only_the_principals_collections(archive, studies, oidc):
    admin = bearer(archive.admin)
    deadline = time.time() + 30
    while time.time() < deadline:
        body = requests.get(f"{archive.url}/api/search", params={"facet": "collection"}, headers=admin).json()
        if body["total"] >= 4:
            break
        time.sleep(0.5)
    assert {f["value"] for f in body["facets"]["collection"]} >= {"a", "b", "c"}
    body = requests.get(f"{archive.url}/api/search", params={"facet": "collection", "q": "AUTH"},
                        headers=bearer(oidc.token("coll-a"))).json()
    assert {h["collection"] for h in body["hits"]} <= {"a"}
    assert [f["value"] for f in body["facets"]["collection"]] in (["a"], [])
    body = requests.get(f"{archive.url}/api/search", params={"collection": "b"},
                        headers=bearer(oidc.token("coll-a"))).json()
    assert body["total"] == 0 and body["hits"] == []


def test_results_api_and_uploads_respect_collections(archive, studies, oidc):
    b = studies["b"][0]
    token = oidc.token("coll-a-write")
    for method, path in (("GET", f"/api/slides/{b['series']}/results"),
                         ("GET", f"/api/slides/{b['series']}/annotations"),
                         ("POST", f"/api/slides/{b['series']}/annotations"),
                         ("POST", f"/api/slides/{b['series']}/segmentations")):
        body = {"geojson": {"type": "FeatureCollection", "features": [feature("Point", [3, 4], "Tumor")]},
                "annotator": "tester"} if method == "POST" else None
        r = requests.request(method, f"{archive.url}{path}", json=body, headers=bearer(token))
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
    a = studies["a"][0]
    r = requests.post(f"{archive.url}/api/slides/{a['series']}/annotations", headers=bearer(token), json={
        "geojson": {"type": "FeatureCollection", "features": [feature("Point", [3, 4], "Tumor")]},
        "annotator": "tester"})
    assert r.status_code == 201, r.text
    assert requests.post(f"{archive.url}/api/slides/{a['series']}/annotations", headers=bearer(oidc.token("coll-a")),
                         json={"geojson": {"type": "FeatureCollection", "features": []}, "annotator": "x"}
                         ).status_code == 403
    found = requests.get(f"{archive.url}/api/results", headers=bearer(oidc.token("coll-a"))).json()["slides"]
    assert [s["series"] for s in found] == [a["series"]]
    other = requests.get(f"{archive.url}/api/results", headers=bearer(cli(archive, "keys", "create", "--name", "c",
                                                                            "--grant", "c"))).json()["slides"]
    assert other == []


# --- passports, whoami, CORS -------------------------------------------------------------------


def test_passport_visas_grant_only_valid_allowed_controlled_access(archive, studies, oidc):
    token = oidc.token("passport")
    who = requests.get(f"{archive.url}/api/whoami", headers=bearer(token)).json()
    assert who["roles"] == {"b": ["read"]}, who
    assert study_uids(qido_studies(archive, token)) == [studies["b"][0]["study"]]


def test_passport_visas_from_the_userinfo_endpoint(archive, studies, loopback, visas):
    """LS Login's way: the token's scope asks for passports, the visas come from userinfo."""
    trusted, _ = visas
    loopback.userinfo = {"sub": "ls-user", "ga4gh_passport_v1": [trusted.visa(DATASET_B, subject="ls-user")]}
    now = int(time.time())
    token = loopback.sign({"iss": loopback.url, "sub": "ls-user", "aud": "slidearchive", "exp": now + 600,
                           "scope": "openid ga4gh_passport_v1"})
    who = requests.get(f"{archive.url}/api/whoami", headers=bearer(token)).json()
    assert who["roles"] == {"b": ["read"]}, who
    without = loopback.sign({"iss": loopback.url, "sub": "ls-user", "aud": "slidearchive", "exp": now + 600,
                             "scope": "openid"})
    assert requests.get(f"{archive.url}/api/whoami", headers=bearer(without)).json()["roles"] == {}


def test_admin_claim_sees_everything(archive, studies, oidc):
    who = requests.get(f"{archive.url}/api/whoami", headers=bearer(oidc.token("admin"))).json()
    assert who["admin"] is True
    assert len(study_uids(qido_studies(archive, oidc.token("admin")))) >= 4


def test_cors_allows_only_configured_origins(archive, studies, oidc):
    token = oidc.token("coll-a")
    a = studies["a"][0]
    frame = f"{archive.dicomweb}/studies/{a['study']}/series/{a['series']}/instances/{a['sop']}/frames/1"
    for url in (f"{archive.dicomweb}/studies", frame):
        ok = requests.get(url, headers={**bearer(token), "Origin": "http://viewer.example", "Accept": "*/*"})
        assert ok.headers.get("Access-Control-Allow-Origin") == "http://viewer.example"
        bad = requests.get(url, headers={**bearer(token), "Origin": "http://evil.example", "Accept": "*/*"})
        assert "Access-Control-Allow-Origin" not in bad.headers
    preflight = requests.options(frame, headers={"Origin": "http://viewer.example",
                                                 "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]


def test_anonymous_reads_public_collections_only(make_server, tmp_path):
    server = make_server(IDENTIFIED + '[auth]\nenabled = true\nanonymous = true\npublic_collections = ["open"]\n',
                         dimse=False)
    admin = cli(server, "keys", "create", "--name", "admin", "--admin")
    for n, collection in enumerate(["open", "closed"]):
        paths = make_slide(tmp_path / collection, SlideSpec(width=256, height=256, seed=350 + n,
                                                            patient_id=f"ANON-{n}", label=False, overview=False))
        assert stow(server, paths, collection, admin).status_code == 200
    everything = study_uids(qido_studies(server, admin))
    public = study_uids(qido_studies(server, None))
    assert len(everything) == 2 and len(public) == 1 and public[0] in everything
    r = requests.post(f"{server.dicomweb}/studies", data=b"", headers={"Content-Type": "multipart/related; boundary=x"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_study_in_two_collections_is_seen_by_readers_of_either(archive, studies, oidc):
    b = studies["b"][0]
    token = oidc.token("coll-a")
    assert b["study"] not in study_uids(qido_studies(archive, token))
    assert cli(archive, "collection", "add", b["study"], "a") == "a b"
    assert b["study"] in study_uids(qido_studies(archive, token))
    assert b["study"] in study_uids(qido_studies(archive, oidc.token("passport")))  # b's readers still see it
    deadline = time.time() + 30
    while time.time() < deadline:  # the search index follows through the outbox
        hits = requests.get(f"{archive.url}/api/search", params={"study_uid": b["study"]},
                            headers=bearer(token)).json()["hits"]
        if hits:
            break
        time.sleep(0.5)
    assert hits and set(hits[0]["collections"]) == {"a", "b"}
    assert cli(archive, "collection", "remove", b["study"], "a") == "b"
    assert b["study"] not in study_uids(qido_studies(archive, token))


def test_qido_answered_from_the_search_index_is_filtered_too(make_server, tmp_path):
    """[index] qido = true: the index picks candidate UIDs, the catalog query still applies the principal."""
    server = make_server(IDENTIFIED + "[index]\nqido = true\n[auth]\nenabled = true\n", dimse=False)
    admin = cli(server, "keys", "create", "--name", "admin", "--admin")
    reader = cli(server, "keys", "create", "--name", "reader", "--grant", "a")
    uids = {}
    for n, collection in enumerate(["a", "b", "a"]):
        paths = make_slide(tmp_path / f"s{n}", SlideSpec(width=256, height=256, seed=380 + n, patient_id=f"IDX-{n}",
                                                         label=False, overview=False))
        r = stow(server, paths, collection, admin)
        assert r.status_code == 200
        uids.setdefault(collection, set()).add(r.json()["00081190"]["Value"][0].rsplit("/", 1)[1])
    deadline = time.time() + 30
    while time.time() < deadline and requests.get(f"{server.url}/api/search", headers=bearer(admin)).json()["total"] < 3:
        time.sleep(0.3)
    assert set(study_uids(qido_studies(server, reader, PatientID="IDX-*"))) == uids["a"]
    assert study_uids(qido_studies(server, reader, PatientID="IDX-1")) == []
    assert len(study_uids(qido_studies(server, reader, PatientID="IDX-*", limit=1, offset=1))) == 1
