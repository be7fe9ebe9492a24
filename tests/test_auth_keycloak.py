"""End to end against a real Keycloak (org.keycloak:keycloak-quarkus-dist from Maven Central, unpacked by
scripts/test.sh): users log in with the password grant, the archive trusts the realm through its discovery
document and JWKS, and each user sees exactly the collections of their realm roles over QIDO, WADO-RS
(the frame fast path included), search and DIMSE. One Keycloak per session: it takes a minute to start."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import requests

from conftest import IDENTIFIED, free_port
from oidc_providers import OIDC_DIR
from slides import SlideSpec, make_slide
from test_auth import bearer, qido_studies, stow, study_uids, with_admin_key

pytestmark = pytest.mark.slow
REALM_FILE = Path(__file__).resolve().parent / "oidc" / "realm-pathology.json"
START_TIMEOUT = 300


def _dist() -> Path:
    found = sorted((OIDC_DIR / "keycloak").glob("keycloak-*/bin/kc.sh"))
    assert found, "Keycloak not unpacked: run mvn -f tests/oidc/pom.xml dependency:unpack"
    return found[-1].parent.parent


@pytest.fixture(scope="session")
def keycloak(tmp_path_factory):
    """kc.sh start-dev --import-realm on loopback, with an in-memory database (a fresh realm every run)."""
    home = tmp_path_factory.mktemp("keycloak") / "kc"
    shutil.copytree(_dist(), home, symlinks=True)
    (home / "data" / "import").mkdir(parents=True, exist_ok=True)
    shutil.copy(REALM_FILE, home / "data" / "import" / REALM_FILE.name)
    port = free_port()
    log = home / "keycloak.log"
    env = dict(os.environ, JAVA_OPTS_KC_HEAP="-Xms64m -Xmx512m")
    process = subprocess.Popen([str(home / "bin" / "kc.sh"), "start-dev", "--import-realm", "--db=dev-mem",
                                "--http-host=127.0.0.1", f"--http-port={port}",
                                f"--http-management-port={free_port()}"],
                               cwd=home, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    issuer = f"http://127.0.0.1:{port}/realms/pathology"
    deadline = time.time() + START_TIMEOUT
    try:
        while True:
            try:
                urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"Keycloak did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(1)
        yield issuer
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(10)


def login(issuer: str, user: str, password: str) -> str:
    body = urllib.parse.urlencode({"grant_type": "password", "client_id": "slidearchive-cli", "username": user,
                                   "password": password, "scope": "openid"}).encode()
    with urllib.request.urlopen(f"{issuer}/protocol/openid-connect/token", data=body, timeout=30) as r:
        return json.loads(r.read())["access_token"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, keycloak):
    config = IDENTIFIED + f"""
[auth]
enabled = true
[[auth.issuer]]
issuer = "{keycloak}"
audience = ["slidearchive"]
"""
    server = with_admin_key(tmp_path_factory.mktemp("kc-archive"), config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def studies(archive, tmp_path_factory) -> dict[str, dict]:
    out = {}
    for n, collection in enumerate(["a", "b"]):
        paths = make_slide(tmp_path_factory.mktemp(f"kc{n}"), SlideSpec(width=512, height=512, seed=600 + n,
                                                                        patient_id=f"KC-{n}", label=False,
                                                                        overview=False))
        r = stow(archive, paths, collection, archive.admin)
        assert r.status_code == 200, r.text
        url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        out[collection] = {"url": url, "study": url.split("/studies/")[1].split("/")[0]}
    return out


def test_keycloak_users_see_their_collections(archive, keycloak, studies):
    alice = login(keycloak, "alice", "alice-password")
    bob = login(keycloak, "bob", "bob-password")
    assert study_uids(qido_studies(archive, alice)) == [studies["a"]["study"]]
    assert study_uids(qido_studies(archive, bob)) == [studies["b"]["study"]]
    who = requests.get(f"{archive.url}/api/whoami", headers=bearer(alice)).json()
    assert who["kind"] == "oidc" and set(who["roles"]["a"]) == {"read", "write"}


def test_keycloak_token_on_frames_and_cross_collection_404(archive, keycloak, studies):
    alice = login(keycloak, "alice", "alice-password")
    frame = f"{studies['a']['url']}/frames/1"
    r = requests.get(frame, headers={**bearer(alice), "Accept": "application/octet-stream; transfer-syntax=*"})
    assert r.status_code == 200 and len(r.content) > 100
    other = f"{studies['b']['url']}/frames/1"
    assert requests.get(other, headers={**bearer(alice), "Accept": "*/*"}).status_code == 404
    assert requests.get(frame, headers={**bearer(alice[:-4] + "AAAA"), "Accept": "*/*"}).status_code == 401


def test_keycloak_write_role_stores_and_read_role_does_not(archive, keycloak, tmp_path):
    paths = make_slide(tmp_path / "new", SlideSpec(width=256, height=256, seed=650, patient_id="KC-NEW",
                                                   label=False, overview=False))
    assert stow(archive, paths, None, login(keycloak, "bob", "bob-password")).status_code == 403
    assert stow(archive, paths, None, login(keycloak, "alice", "alice-password")).status_code == 200
