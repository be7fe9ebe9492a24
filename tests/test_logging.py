"""The server's log: [logging] destination, level and format, the access log, no noise, no PHI."""
from __future__ import annotations

import json
import re
import time

import pytest
import requests

from slides import SlideSpec, make_slide
from test_results_support import api, feature, stow

ACCESS_PREFIX = '"GET /dicomweb/studies?PatientName=&limit="'


def _stow_slide(server, tmp_path, seed: int) -> str:
    """STOW a slide; the series UID as stored (pseudonymous under the default policy)."""
    paths = make_slide(tmp_path / f"slide{seed}", SlideSpec(width=512, height=512, seed=seed))
    status, body = stow(server, paths)
    assert status in (200, 202), body
    url = next(i["00081190"]["Value"][0] for i in body["00081199"]["Value"] if "00081190" in i)
    return url.split("/series/")[1].split("/")[0]


def _wait_for(path, needle: str, timeout: float = 10) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = path.read_text() if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {path}:\n{text[-2000:]}")


def test_log_file_access_log_and_no_pseudonym_noise(make_server, tmp_path):
    server = make_server('[logging]\nfile = "logs/server.log"\nlevel = "info"\n')
    log_file = server.data_dir / "logs" / "server.log"
    series = _stow_slide(server, tmp_path, 81)
    features = [feature("Point", [10, 10], "tumor"), feature("Polygon", [[[1, 1], [40, 1], [40, 40], [1, 1]]], "tumor")]
    status, body = api(server, "POST", f"/slides/{series}/annotations",
                       {"geojson": {"type": "FeatureCollection", "features": features},
                        "algorithm": {"name": "cellfinder", "version": "1.0"}})
    assert status == 201, body
    status, body = api(server, "POST", f"/slides/{series}/annotations",
                       {"geojson": {"type": "FeatureCollection", "features": features}, "annotator": "Pathologist"})
    assert status == 201, body
    r = requests.get(f"{server.dicomweb}/studies", params={"PatientName": "DOE^JANE", "limit": "5"})
    assert r.status_code == 200
    # each HTTP worker writes its access lines on its own, twice a second: wait for every line this test made
    for needle in (f'"POST /api/slides/{series}/annotations" 201', '"POST /dicomweb/studies" 20', ACCESS_PREFIX):
        text = _wait_for(log_file, needle)
    m = re.search(r'slidearchive.access: (\S+) "GET /dicomweb/studies\?PatientName=&limit=" (\d{3}) (\d+) ([\d.]+)ms', text)
    assert m, text
    assert m.group(1) == "127.0.0.1" and m.group(2) == "200" and int(m.group(3)) == len(r.content)
    assert "DOE" not in text and "JANE" not in text  # query values never reach the log
    # the pseudonym's one-component name is not a problem; the annotator's is, and stays visible
    assert "unlikely to represent" in text and '"Pathologist"' in text
    assert text.count("unlikely to represent") == 1, text
    assert "unlikely to represent" not in server.log_path.read_text()  # nothing left on stderr either


def test_json_format_and_access_log_off(make_server, tmp_path):
    server = make_server('[logging]\nfile = "server.jsonl"\nformat = "json"\n')
    assert requests.get(f"{server.dicomweb}/studies?limit=1").status_code == 200
    text = _wait_for(server.data_dir / "server.jsonl", "/dicomweb/studies?limit=")
    entries = [json.loads(x) for x in text.splitlines()]  # every line is one JSON object
    entry = next(e for e in entries if e.get("path") == "/dicomweb/studies?limit=")
    assert entry["logger"] == "slidearchive.access" and entry["method"] == "GET" and entry["status"] == "200"
    assert entry["bytes"] == 2 and entry["ms"] >= 0

    quiet = make_server('[logging]\naccess_log = false\n')
    assert requests.get(f"{quiet.dicomweb}/studies").status_code == 200
    time.sleep(0.5)
    assert "slidearchive.access" not in quiet.log_path.read_text()
    assert '"GET /dicomweb/studies"' not in quiet.log_path.read_text()


@pytest.mark.parametrize("text, message", [
    ("[logging]\nlevel = 'loud'", "[logging] level must be one of"),
    ("[logging]\nformat = 'xml'", "[logging] format must be"),
    ("[logging]\ncolour = true", "[logging] unknown keys: colour"),
])
def test_logging_configuration_errors(tmp_path, text, message):
    from test_cli import run

    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = run("serve", "--data-dir", str(tmp_path / "data"), "--config", str(path), "--no-dimse")
    assert result.returncode == 2 and "configuration error" in result.stderr and message in result.stderr


def test_failure_site_names_code_not_values():
    """An unexpected failure's log line says where it was raised, without the exception's text."""
    from archive.logs import failure_site

    def read_number(value: str) -> int:
        return int(value)

    def index(value: str) -> int:
        return read_number(value)

    try:
        index("DOE^JANE")
    except ValueError as e:
        site = failure_site(e)
    assert re.fullmatch(r"test_logging\.py:\d+ read_number < test_logging\.py:\d+ index"
                        r" < test_logging\.py:\d+ test_failure_site_names_code_not_values", site), site
    assert "DOE" not in site
