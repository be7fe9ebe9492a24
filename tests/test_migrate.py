"""``slidearchive migrate``: a single-machine archive (made by a real server: SQLite catalog, storage
directory, its own pseudonym key) copied into another catalog and storage, in runs that are cut short
(--limit, SIGKILL) and continued; checksums verified; the destination served by a real server with the
same UIDs, the same bytes, the same collections and the same pseudonym key."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests

from conftest import REPO, Server
from slides import SlideSpec, make_slide
from test_auth import stow

pytestmark = pytest.mark.slow
#: The source is a single-machine archive (SQLite + directory) whichever backends the suite's other servers use.
SINGLE_MACHINE = '[catalog]\nurl = ""\n[storage]\nurl = ""\n'
#: The destinations keep the suite's storage backend (a bucket in its S3 pass): migrate into it.
SQLITE_CATALOG = '[catalog]\nurl = ""\n'


def cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A stopped single-machine archive (Basic Profile, keyed pseudonyms) holding three slides."""
    root = tmp_path_factory.mktemp("source")
    server = Server(root / "server", SINGLE_MACHINE).start()
    slides = []
    for n in range(3):
        paths = make_slide(root / f"slide{n}", SlideSpec(width=500, height=400, seed=610 + n,
                                                         patient_id=f"MIG-{n}", label=False, overview=False))
        r = stow(server, paths, None, "")
        assert r.status_code in (200, 202), r.text
        slides.append(paths)
    studies = requests.get(f"{server.dicomweb}/studies", timeout=30).json()
    first = studies[0]["0020000D"]["Value"][0]
    added = cli("collection", "add", "--data-dir", str(server.data_dir), "--config", str(server.config_path),
                first, "teaching")
    assert added.returncode == 0, added.stderr
    server.stop()
    return server, slides, first


def instances(server: Server) -> dict[str, dict]:
    r = requests.get(f"{server.dicomweb}/instances", params={"includefield": "00280008"}, timeout=30)
    return {i["00080018"]["Value"][0]: i for i in r.json()}


def destination(root: Path, name: str, config: str = SQLITE_CATALOG) -> Server:
    server = Server(root / name, config)
    server.data_dir.mkdir(parents=True)
    return server


def migrate(source: Server, dest: Server, *extra: str) -> subprocess.CompletedProcess:
    return cli("migrate", str(source.data_dir), "--data-dir", str(dest.data_dir), "--config", str(dest.config_path),
               "--source-config", str(source.config_path), "--quiet", *extra)


@pytest.mark.parametrize("catalog", ["sqlite", "postgresql"])
def test_migrate_in_two_runs_then_serve_the_same_archive(source, tmp_path, request, catalog):
    src, slides, teaching_study = source
    total = sum(len(s) for s in slides)
    config = SQLITE_CATALOG if catalog == "sqlite" else \
        f'[catalog]\nurl = "{request.getfixturevalue("postgresql_url")}"\n'
    dest = destination(tmp_path, "dest", config)
    first = migrate(src, dest, "--limit", "3")
    assert first.returncode == 1 and "3 instances copied and verified" in first.stdout, first.stdout + first.stderr
    assert f"{total - 3} left for the next run" in first.stdout
    second = migrate(src, dest)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{total - 3} instances copied" in second.stdout and "3 already there" in second.stdout
    again = migrate(src, dest)
    assert again.returncode == 0 and f"0 instances copied" in again.stdout and f"{total} already there" in again.stdout

    verify = cli("verify", "--checksums", "--data-dir", str(dest.data_dir), "--config", str(dest.config_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    src.start()
    dest.start()
    try:
        before, after = instances(src), instances(dest)
        assert set(before) == set(after) and len(after) == total
        for sop, item in list(before.items())[:4]:
            study, series = item["0020000D"]["Value"][0], item["0020000E"]["Value"][0]
            url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/1"
            accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
            a = requests.get(src.url + url, headers=accept, timeout=30)
            b = requests.get(dest.url + url, headers=accept, timeout=30)
            assert a.status_code == b.status_code == 200
            assert a.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0] == \
                b.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
        collections = cli("collection", "show", "--data-dir", str(dest.data_dir), "--config", str(dest.config_path),
                          teaching_study)
        assert "teaching" in collections.stdout and "default" in collections.stdout, collections.stdout
        # the pseudonym key came along: the same original slide sent again lands on the same pseudonymous UIDs
        r = stow(dest, slides[1], None, "")
        assert r.status_code in (200, 202), r.text
        assert instances(dest).keys() == after.keys()
    finally:
        src.stop()
        dest.stop()


def test_a_killed_run_continues_and_leaves_no_orphan(source, tmp_path):
    src, slides, _ = source
    dest = destination(tmp_path, "dest")
    journal = dest.data_dir / "migrate.journal"
    proc = subprocess.Popen([sys.executable, "-m", "archive.cli", "migrate", str(src.data_dir), "--data-dir",
                             str(dest.data_dir), "--config", str(dest.config_path), "--quiet"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("put ") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert journal.read_text().count("done ") < sum(len(s) for s in slides)  # cut short
    rerun = migrate(src, dest)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    verify = cli("verify", "--checksums", "--data-dir", str(dest.data_dir), "--config", str(dest.config_path))
    assert verify.returncode == 0 and re.search(r"(files|objects) without catalog rows: 0", verify.stdout), verify.stdout


def test_a_corrupt_source_file_is_not_copied(source, tmp_path):
    src, slides, _ = source
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(src.data_dir), str(copy)], check=True)
    victim = sorted(p for p in (copy / "storage").glob("*/*/*") if p.parent.parent.name != "tmp")[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    dest = destination(tmp_path, "dest")
    result = cli("migrate", str(copy), "--data-dir", str(dest.data_dir), "--config", str(dest.config_path), "--quiet")
    assert result.returncode == 1 and "1 failed" in result.stdout, result.stdout
    assert "does not match its checksum" in result.stderr
    total = sum(len(s) for s in slides)
    assert f"{total - 1} instances copied" in result.stdout


def test_migrate_refuses_what_it_cannot_do(source, tmp_path):
    src, _, _ = source
    missing = cli("migrate", str(tmp_path / "nothing"), "--data-dir", str(tmp_path / "d"))
    assert missing.returncode == 2 and "no single-machine archive" in missing.stderr
    same = cli("migrate", str(src.data_dir), "--data-dir", str(src.data_dir), "--config", str(src.config_path))
    assert same.returncode == 2 and "the destination data directory is the source" in same.stderr
    other = destination(tmp_path, "other")
    other.start()  # an archive with its own key and an instance of its own
    paths = make_slide(tmp_path / "own", SlideSpec(width=300, height=300, seed=699, label=False, overview=False))
    assert stow(other, paths, None, "").status_code in (200, 202)
    other.stop()
    refused = migrate(src, other)
    assert refused.returncode == 2 and "another pseudonym key" in refused.stderr, refused.stdout + refused.stderr
