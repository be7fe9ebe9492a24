"""The slidearchive command: import, verify (and repair), configuration errors, --help."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IDENTIFIED
from slides import SlideSpec, make_slide


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archive.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "identified.toml"
    path.write_text(IDENTIFIED)
    return path


@pytest.mark.parametrize("command", ["serve", "import", "verify", "broker"])
def test_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "usage: slidearchive" in result.stdout


def test_import_summary_and_failures(tmp_path, config):
    folder = tmp_path / "in"
    make_slide(folder / "a", SlideSpec(width=512, height=512, seed=61))
    (folder / "notes.txt").write_text("not DICOM")
    data = tmp_path / "data"
    result = run("import", str(folder), "--data-dir", str(data), "--config", str(config))
    assert result.returncode == 1  # one file failed
    assert "5 files: 4 stored, 0 already stored, 0 dropped by policy, 1 failed" in result.stdout
    assert "notes.txt: Cannot understand" in result.stderr
    assert "[" in result.stderr  # the progress bar
    again = run("import", str(folder / "a"), "--data-dir", str(data), "--config", str(config), "-q")
    assert again.returncode == 0 and "4 already stored" in again.stdout
    missing = run("import", str(tmp_path / "nope.dcm"), "--data-dir", str(data))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_import_with_default_policy_drops_labels(tmp_path):
    make_slide(tmp_path / "in", SlideSpec(width=512, height=512, seed=62))
    result = run("import", str(tmp_path / "in"), "--data-dir", str(tmp_path / "data"), "-q")
    assert result.returncode == 0, result.stderr
    assert "2 stored" in result.stdout and "2 dropped by policy" in result.stdout


def test_verify_reports_and_repairs(tmp_path, config):
    data = tmp_path / "data"
    make_slide(tmp_path / "in", SlideSpec(width=1024, height=768, seed=63, label=False, overview=False))
    assert run("import", str(tmp_path / "in"), "--data-dir", str(data), "--config", str(config), "-q").returncode == 0
    ok = run("verify", "--data-dir", str(data), "--config", str(config), "--checksums")
    assert ok.returncode == 0, ok.stdout
    stored = sorted(p for p in (data / "storage").rglob("*") if p.is_file() and p.parent.name != "tmp")
    stored[0].unlink()  # bytes lost
    (stored[1].parent / "0123456789abcdef").write_bytes(b"orphan")  # bytes nobody catalogued
    with open(stored[2], "r+b") as f:  # silent corruption
        f.seek(-10, 2)
        f.write(b"XXXXXXXXXX")
    bad = run("verify", "--data-dir", str(data), "--config", str(config), "--checksums")
    assert bad.returncode == 1
    assert "missing files: 1; files without catalog rows: 1; checksum mismatches: 1" in bad.stdout
    fixed = run("verify", "--data-dir", str(data), "--config", str(config), "--repair")
    assert "removed 1 rows without bytes, 1 orphan files" in fixed.stdout
    assert run("verify", "--data-dir", str(data), "--config", str(config)).returncode == 0


@pytest.mark.parametrize("text, message", [
    ("[server\nhost=", "not valid TOML"),
    ("[server]\nhttp_port = 'eighty'", "http_port must be int"),
    ("[server]\nhttp_port = 70000", "out of range"),
    ("[server]\nno_such_key = 1", "unknown keys: no_such_key"),
    ("[nonsense]\n", "unknown configuration sections"),
    ("[dimse]\nae_title = 'THIS TITLE IS FAR TOO LONG'", "invalid AE title"),
    ("[[dimse.remote]]\nae_title = 'X'", "needs ae_title, host and port"),
    ("[deid]\ndefault = 'missing'", "undefined policy"),
    ("[results]\ndangling_references = 'ignore'", "must be \"refuse\" or \"warn\""),
])
def test_configuration_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = run("verify", "--data-dir", str(tmp_path / "data"), "--config", str(path))
    assert result.returncode == 2
    assert "configuration error" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_index_configuration(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[index]\nbackend = 'solr'\n")
    result = run("serve", "--data-dir", str(tmp_path / "data"), "--config", str(path), "--no-dimse")
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "[index]" in result.stderr


def test_bad_remote_option(tmp_path):
    result = run("serve", "--data-dir", str(tmp_path), "--remote", "NOPE")
    assert result.returncode == 2 and "AE=HOST:PORT" in result.stderr
