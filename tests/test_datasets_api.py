"""/api/datasets against the real server: define, release, find and cite; the manifest is the
bytes WADO-RS serves; a deleted slide stays listed as withdrawn; bad input changes nothing."""
from __future__ import annotations

import email.parser
import email.policy
import hashlib
import html.parser
import json
import subprocess
import sys
import time

import datacite.schema45
import pytest
import requests

from archive.audit.log import read_records
from conftest import REPO, Server
from slides import SlideSpec, make_slide
from test_results_support import feature

#: The default de-identification (Basic Profile, keyed pseudonyms): what a release may say is what survives it.
CONFIG = """
[datasets]
publisher = "Example Pathology Archive"
"""
DERM = {"id": "derm-2024", "title": "Synthetic breast biopsies, 2024",
        "description": "Generated whole-slide images of two cases, H&E stained, for testing dataset releases.",
        "license": "CC-BY-4.0", "terms_of_use": "Research use only; do not attempt re-identification.",
        "keywords": ["breast", "H&E"], "collection": "derm",
        "contributors": [{"name": "Doe, Jane", "orcid": "0000-0002-1825-0097", "affiliation": "Example University"},
                         {"name": "Roe, Richard", "role": "contributor"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("datasets"), CONFIG, dimse=False).start()
    yield s
    s.stop()


def stow(server: Server, paths, collection: str, token: str | None = None) -> str:
    """Store the files in ``collection`` (as ``token``'s holder, if given); returns the stored (de-identified)
    Study Instance UID."""
    boundary = "dsboundary"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    r = requests.post(f"{server.dicomweb}/studies?collection={collection}", data=body, headers={
        "Accept": "application/dicom+json", **({"Authorization": f"Bearer {token}"} if token else {}),
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code in (200, 202) and "00081198" not in r.json(), r.text  # 202: coerced (de-identified)
    return r.json()["00081190"]["Value"][0].rsplit("/studies/", 1)[1]


@pytest.fixture(scope="module")
def slides(server, tmp_path_factory) -> dict[str, list[dict]]:
    """Two slides (two cases) in collection derm, one in other: {collection: [{study, series, patient}]}."""
    out: dict[str, list[dict]] = {"derm": [], "other": []}
    for n, collection in enumerate(["derm", "derm", "other"]):
        paths = make_slide(tmp_path_factory.mktemp(f"slide{n}"), SlideSpec(
            width=512, height=512, seed=700 + n, patient_id=f"PHI-PATIENT-{n}", label=False, overview=False))
        study = stow(server, paths, collection)
        (row,) = requests.get(f"{server.dicomweb}/studies/{study}/series", params={"includefield": "PatientID"},
                              headers={"Accept": "application/dicom+json"}).json()
        out[collection].append({"study": study, "series": row["0020000E"]["Value"][0],
                                "patient": row["00100020"]["Value"][0]})
    return out


def api(server: Server, method: str, path: str, body=None, **kwargs) -> requests.Response:
    return requests.request(method, f"{server.url}/api/datasets{path}", json=body, **kwargs)


def retrieved(server: Server, study: str, series: str) -> dict[str, bytes]:
    """SOP Instance UID -> the bytes WADO-RS sends for each instance of the series."""
    r = requests.get(f"{server.dicomweb}/studies/{study}/series/{series}",
                     headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {r.headers['Content-Type']}\r\n\r\n".encode() + r.content)
    out = {}
    for part in message.iter_parts():
        data = part.get_payload(decode=True)
        from io import BytesIO

        from pydicom import dcmread

        out[str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return out


def wait_indexed(server: Server, collection: str, count: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if requests.get(f"{server.url}/api/search", params={"collection": collection, "size": 0}).json()["total"] \
                >= count:
            return
        time.sleep(0.2)
    raise AssertionError("the index did not catch up")


@pytest.fixture(scope="module")
def released(server, slides) -> dict:
    wait_indexed(server, "derm", 2)
    r = api(server, "POST", "", DERM)
    assert r.status_code == 201, r.text
    patient = slides["derm"][0]["patient"]
    r = api(server, "PUT", "/derm-2024/cases", {"cases": [{"patient_id": patient, "diagnosis": "Invasive carcinoma",
                                                          "sex": "F", "age_band": "50-59"}]})
    assert r.status_code == 200, r.text
    cells = [feature("Point", [10 + i, 20], "Tumor") for i in range(3)]  # an AI result on the first slide
    r = requests.post(f"{server.url}/api/slides/{slides['derm'][0]['series']}/annotations",
                      json={"geojson": {"type": "FeatureCollection", "features": cells},
                            "algorithm": {"name": "cellfinder", "version": "1.0"}})
    assert r.status_code == 201, r.text
    r = api(server, "POST", "/derm-2024/releases")
    assert r.status_code == 201, r.text
    assert r.headers["Location"].endswith("/api/datasets/derm-2024/releases/1")
    return r.json()


def test_release_manifest_matches_the_bytes_the_archive_serves(server, slides, released):
    manifest = api(server, "GET", "/derm-2024/releases/1/manifest").json()
    items = manifest["items"]
    series = {(i["study_uid"], i["series_uid"]) for i in items}
    slide_series = {(s["study"], s["series"]) for s in slides["derm"]}
    assert slide_series < series and len(series) == 3  # the slides and the annotation that references one
    served = {}
    for study, uid in series:
        served.update(retrieved(server, study, uid))
    assert {i["sop_instance_uid"] for i in items} == set(served)  # every instance of those series, once
    for item in items:
        data = served[item["sop_instance_uid"]]
        assert item["size"] == len(data) and item["sha256"] == hashlib.sha256(data).hexdigest()
        assert item["kind"] == ("slide" if (item["study_uid"], item["series_uid"]) in slide_series else "annotation")
        assert "withdrawn" not in item
    counts = released["counts"]
    assert counts["slides"] == 2 and counts["cases"] == 2 and counts["instances"] == len(items)
    assert counts["annotation_series"] == 1 and counts["annotations"] == 3
    assert counts["size"] == sum(len(d) for d in served.values())
    assert counts["stains"] == {"hematoxylin stain": 2, "water soluble eosin stain": 2}
    assert counts["anatomic_sites"] == {"Breast": 2} and counts["scanners"] == {"Example Scanners SlideScan 9000": 2}
    # Basic Profile: sex and age are not kept, so only the curator's values for one case appear
    assert counts["sexes"] == {"F": 1} and counts["diagnoses"] == {"Invasive carcinoma": 1}
    assert released["identifier"] == "urn:slidearchive:dataset:derm-2024:v1"
    assert released["collection"] == "dataset:derm-2024:v1" and released["status"] == "released"
    text = json.dumps(manifest)
    assert "PHI-PATIENT" not in text and all(s["patient"] not in text for s in slides["derm"])
    assert {c["case_id"] for c in manifest["cases"]} == {i["case_id"] for i in items}
    assert hashlib.sha256("".join(f"{i['sha256']}  {i['size']}  {i['sop_instance_uid']}\n" for i in sorted(
        items, key=lambda i: i["sop_instance_uid"])).encode()).hexdigest() == released["manifest_sha256"]


def test_jsonld_has_what_schema_org_dataset_consumers_need(server, released):
    r = api(server, "GET", "/derm-2024/releases/1/jsonld")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/ld+json")
    doc = r.json()
    assert doc["@context"] == "https://schema.org/" and doc["@type"] == "Dataset"
    for field in ("name", "description", "identifier", "license", "creator", "url", "version", "distribution",
                  "keywords", "datePublished", "publisher", "includedInDataCatalog"):
        assert doc.get(field), field
    assert 50 <= len(doc["description"]) <= 5000  # Google's Dataset guidance
    assert doc["identifier"] == released["identifier"] and doc["version"] == "1"
    assert doc["license"] == "https://spdx.org/licenses/CC-BY-4.0.html"
    assert doc["creator"] == [{"@type": "Person", "name": "Doe, Jane", "@id": "https://orcid.org/0000-0002-1825-0097",
                               "identifier": "https://orcid.org/0000-0002-1825-0097",
                               "affiliation": {"@type": "Organization", "name": "Example University"}}]
    assert doc["contributor"][0]["name"] == "Roe, Richard"
    assert doc["publisher"]["name"] == "Example Pathology Archive"
    assert doc["url"] == f"{server.url}/datasets/derm-2024/v1"
    assert {d["encodingFormat"] for d in doc["distribution"]} == {"application/dicom", "application/json"}
    assert all(d["@type"] == "DataDownload" and d["contentUrl"].startswith(server.url) for d in doc["distribution"])


def test_datacite_json_validates_against_the_datacite_4_5_schema(server, released):
    r = api(server, "GET", "/derm-2024/releases/1/datacite")
    assert r.status_code == 200
    doc = r.json()
    errors = [e.message for e in datacite.schema45.validator.iter_errors(doc)]
    assert errors == []
    assert doc["types"]["resourceTypeGeneral"] == "Dataset" and doc["publicationYear"] == released["released_at"][:4]
    assert doc["alternateIdentifiers"] == [{"alternateIdentifier": released["identifier"],
                                            "alternateIdentifierType": "URN"}]
    assert doc["creators"][0]["nameIdentifiers"][0]["nameIdentifier"] == "https://orcid.org/0000-0002-1825-0097"
    assert doc["rightsList"][0]["rightsIdentifier"] == "CC-BY-4.0"


def test_citation_names_creators_year_title_version_publisher_identifier(server, released):
    r = api(server, "GET", "/derm-2024/releases/1/citation")
    assert r.headers["Content-Type"].startswith("text/plain")
    year = released["released_at"][:4]
    assert r.text.strip() == (f"Doe, Jane ({year}): Synthetic breast biopsies, 2024. Version 1. "
                              "Example Pathology Archive. urn:slidearchive:dataset:derm-2024:v1")
    assert released["citation"] == r.text.strip()


def test_find_lists_and_searches_released_datasets(server, released):
    found = api(server, "GET", "", params={"q": "breast biopsies"}).json()
    assert [d["id"] for d in found["datasets"]] == ["derm-2024"]
    assert found["datasets"][0]["releases"][0]["identifier"] == released["identifier"]
    assert api(server, "GET", "", params={"q": "no-such-word"}).json()["total"] == 0
    one = api(server, "GET", "/derm-2024").json()
    assert one["title"] == DERM["title"] and one["latest_version"] == 1 and len(one["releases"]) == 1


def test_a_saved_search_dataset_releases_what_the_search_finds(server, slides):
    body = dict(DERM, id="by-search", collection=None, search="collection=other")
    assert api(server, "POST", "", body).status_code == 201
    wait_indexed(server, "other", 1)
    r = api(server, "POST", "/by-search/releases")
    assert r.status_code == 201, r.text
    manifest = api(server, "GET", "/by-search/releases/1/manifest").json()
    assert {i["series_uid"] for i in manifest["items"]} == {slides["other"][0]["series"]}
    assert r.json()["counts"]["selected"] == {"search": 1, "collection": 0}


def test_a_deleted_slide_is_marked_withdrawn_in_the_release(server, slides, released):
    body = dict(DERM, id="to-delete", collection=None)
    victim = slides["derm"][1]
    assert api(server, "POST", "", dict(body, series=[victim["series"]])).status_code == 201
    assert api(server, "POST", "/to-delete/releases").status_code == 201
    r = requests.delete(f"{server.dicomweb}/studies/{victim['study']}/series/{victim['series']}")
    assert r.status_code in (200, 204), r.text
    for path in ("/to-delete/releases/1/manifest", "/derm-2024/releases/1/manifest"):
        items = [i for i in api(server, "GET", path).json()["items"] if i["series_uid"] == victim["series"]]
        assert items and all(i["withdrawn"]["reason"] == "deleted from the archive" and i["withdrawn"]["at"]
                             for i in items)
    # the release itself is unchanged: same counts and digest, still resolvable
    again = api(server, "GET", "/derm-2024/releases/1").json()
    assert again["manifest_sha256"] == released["manifest_sha256"] and again["counts"] == released["counts"]


def test_a_curator_withdraws_a_release_and_its_citation_says_so(server, slides):
    body = dict(DERM, id="retracted")
    assert api(server, "POST", "", body).status_code == 201
    assert api(server, "POST", "/retracted/releases").status_code == 201
    assert api(server, "POST", "/retracted/releases/1/withdraw", {}).status_code == 400
    r = api(server, "POST", "/retracted/releases/1/withdraw", {"reason": "consent withdrawn for one case"})
    assert r.status_code == 200, r.text
    assert r.json()["release"]["status"] == "withdrawn"
    assert "(withdrawn " in api(server, "GET", "/retracted/releases/1/citation").text
    dates = api(server, "GET", "/retracted/releases/1/datacite").json()["dates"]
    assert {d["dateType"] for d in dates} == {"Issued", "Withdrawn"}
    manifest = api(server, "GET", "/retracted/releases/1/manifest").json()
    assert manifest["items"] and all("withdrawn" in i for i in manifest["items"])
    assert api(server, "POST", "/retracted/releases/1/withdraw", {"reason": "again"}).status_code == 409


def _state(server: Server) -> tuple:
    drafts = api(server, "GET", "", params={"drafts": "1", "limit": 500}).json()
    return drafts["total"], json.dumps(drafts["datasets"], sort_keys=True)


@pytest.mark.parametrize("method, path, body, status, word", [
    ("POST", "", {k: v for k, v in DERM.items() if k != "title"} | {"id": "x1"}, 400, "title is required"),
    ("POST", "", dict(DERM, id="x2", contributors=[]), 400, "contributors is required"),
    ("POST", "", dict(DERM, id="x3", license="free!"), 400, "license"),
    ("POST", "", dict(DERM, id="x4", series=["1.2.3.999"]), 404, "no series 1.2.3.999"),
    ("POST", "", dict(DERM, id="x5", colour="red"), 400, "unknown field"),
    ("POST", "", dict(DERM, id="x6", search="sort=series_uid"), 400, "filters only"),
    ("POST", "", dict(DERM, id="derm-2024"), 409, "exists already"),
    ("POST", "", dict(DERM, id="grants"), 400, "reserved"),
    ("POST", "", "not an object", 400, "JSON object"),
    ("PUT", "/no-such-dataset", {"title": "t"}, 404, "no dataset"),
    ("POST", "/derm-2024/series", {"add": ["1.2.3.999"]}, 404, "no series"),
    ("POST", "/derm-2024/series", {"add": ["not a uid"]}, 400, "digits and dots"),
    ("PUT", "/derm-2024/cases", {"cases": [{"patient_id": "p", "sex": "female"}]}, 400, "sex must be"),
    ("PUT", "/derm-2024/cases", {"cases": [{"patient_id": "p", "age_band": "54"}]}, 400, "age_band"),
    ("POST", "/no-such-dataset/releases", None, 404, "no dataset"),
    ("POST", "/derm-2024/releases/99/withdraw", {"reason": "r"}, 404, "no release"),
])
def test_bad_input_is_a_clear_4xx_and_changes_nothing(server, released, method, path, body, status, word):
    before = _state(server)
    r = api(server, method, path, body) if body != "not an object" else \
        requests.post(f"{server.url}/api/datasets", data="not json", headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert word in r.json()["message"]
    assert _state(server) == before


def test_release_of_an_empty_dataset_is_refused_and_changes_nothing(server, released):
    assert api(server, "POST", "", dict(DERM, id="empty-one", collection=None)).status_code == 201
    before = _state(server)
    r = api(server, "POST", "/empty-one/releases")
    assert r.status_code == 409 and "nothing to release" in r.json()["message"]
    assert _state(server) == before
    assert api(server, "GET", "/empty-one/releases/1").status_code == 404


def test_every_curation_step_is_audited(server, released):
    api(server, "POST", "/no-such-dataset/releases")
    deadline = time.time() + 20
    while True:
        descriptions = [r["AuditMessage"]["EventIdentification"].get("EventOutcomeDescription", "")
                        for r in read_records(server.data_dir / "audit")]
        if any("release no-such" in d for d in descriptions) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert any(d == "create dataset derm-2024" for d in descriptions)
    assert any(d.startswith("release derm-2024:v1 (urn:slidearchive:dataset:derm-2024:v1)") for d in descriptions)
    assert any(d.startswith("release derm-2024:v1: 2 studies joined collection dataset:derm-2024:v1")
               for d in descriptions)
    assert any(d.startswith("release dataset no-such-dataset: refused") for d in descriptions)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", "dataset", *args, "--data-dir", str(server.data_dir),
                           "--config", str(server.config_path)], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_curator_cli_defines_releases_and_withdraws(server, slides, tmp_path):
    first, second = (s["series"] for s in slides["derm"][:1] + slides["other"])
    made = cli(server, "create", "cli-set", "--title", "From the command line", "--description",
               "A dataset curated with slidearchive dataset, for the CLI test.", "--license", "CC0-1.0",
               "--creator", "Doe, Jane;Example University;0000-0002-1825-0097", "--series", first)
    assert made.returncode == 0, made.stderr
    assert cli(server, "add", "cli-set", second).returncode == 0
    cases = tmp_path / "cases.csv"
    cases.write_text(f"patient_id,diagnosis,sex\n{slides['other'][0]['patient']},Nevus,M\n")
    assert cli(server, "cases", "cli-set", str(cases)).returncode == 0
    out = cli(server, "release", "cli-set", "--json")
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)["counts"]
    assert counts["slides"] == 2 and counts["diagnoses"] == {"Nevus": 1} and counts["sexes"] == {"M": 1}
    # what the CLI released, the API serves
    assert api(server, "GET", "/cli-set/releases/1").json()["counts"] == counts
    assert cli(server, "withdraw", "cli-set", "1", "--reason", "scan replaced", "--series", second).returncode == 0
    shown = json.loads(cli(server, "show", "cli-set", "--version", "1", "--json").stdout)
    marked = {i["series_uid"] for i in shown["items"] if "withdrawn" in i}
    assert marked == {second} and {i["withdrawn"]["reason"] for i in shown["items"] if "withdrawn" in i} == \
        {"scan replaced"}
    listed = cli(server, "list")
    assert "cli-set  v1 released" in listed.stdout


@pytest.mark.parametrize("args, word", [
    (("release", "no-such-set"), "no dataset"),
    (("create", "Bad Id", "--title", "t"), "id must be"),
    (("create", "cli-bad", "--title", "t", "--description", "d", "--license", "CC0-1.0"), "contributors is required"),
    (("add", "derm-2024", "1.2.3.999"), "no series 1.2.3.999"),
    (("withdraw", "derm-2024", "7", "--reason", "r"), "no release"),
])
def test_the_cli_refuses_bad_input_in_one_line_and_changes_nothing(server, released, args, word):
    before = _state(server)
    out = cli(server, *args)
    assert out.returncode != 0 and word in out.stderr and "Traceback" not in out.stderr
    assert _state(server) == before


class _JsonLd(html.parser.HTMLParser):
    """The JSON-LD blocks of a page, as a crawler reads them."""

    def __init__(self):
        super().__init__()
        self.blocks: list[str] = []
        self._inside = False

    def handle_starttag(self, tag, attrs):
        self._inside = tag == "script" and ("type", "application/ld+json") in attrs
        if self._inside:
            self.blocks.append("")

    def handle_endtag(self, tag):
        self._inside = False

    def handle_data(self, data):
        if self._inside:
            self.blocks[-1] += data


def jsonld_of(page: str) -> list[dict]:
    parser = _JsonLd()
    parser.feed(page)
    return [json.loads(b) for b in parser.blocks]


def test_the_landing_page_shows_the_release_and_embeds_its_json_ld(server, released):
    r = requests.get(f"{server.url}/datasets/derm-2024/v1")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.text
    for text in (DERM["title"], "Version 1", released["citation"].replace("&", "&amp;"), "Doe, Jane",
                 "https://spdx.org/licenses/CC-BY-4.0.html", "Slides</th><td>2", "Breast (2)",
                 released["manifest_sha256"]):
        assert text in page, text
    assert jsonld_of(page) == [api(server, "GET", "/derm-2024/releases/1/jsonld").json()]
    newest = requests.get(f"{server.url}/datasets/derm-2024", allow_redirects=False)
    assert newest.status_code == 302 and newest.headers["Location"].endswith("/datasets/derm-2024/v1")
    listing = requests.get(f"{server.url}/datasets", params={"q": "biopsies"}).text
    assert 'href="/datasets/derm-2024/v1"' in listing
    assert requests.get(f"{server.url}/datasets/derm-2024/v9").status_code == 404


def test_curator_text_cannot_break_out_of_the_page(server, slides):
    evil = "Slides </script><script>alert(1)</script> & <b>bold</b> claims, long enough to be a description."
    body = dict(DERM, id="evil-text", title="<img src=x onerror=alert(1)>", description=evil)
    assert api(server, "POST", "", body).status_code == 201
    assert api(server, "POST", "/evil-text/releases").status_code == 201
    page = requests.get(f"{server.url}/datasets/evil-text/v1").text
    assert "<script>alert(1)" not in page and "<img src=x" not in page and "<b>bold" not in page
    (doc,) = jsonld_of(page)
    assert doc["description"] == evil and doc["name"] == body["title"]


def test_a_withdrawn_release_page_says_so(server, slides):
    assert api(server, "POST", "", dict(DERM, id="gone-page")).status_code == 201
    assert api(server, "POST", "/gone-page/releases").status_code == 201
    assert api(server, "POST", "/gone-page/releases/1/withdraw", {"reason": "labels mixed up"}).status_code == 200
    page = requests.get(f"{server.url}/datasets/gone-page/v1").text
    assert "This version was withdrawn on" in page and "labels mixed up" in page
