"""The slidearchive command: import, verify (and repair), configuration errors, --help."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import IDENTIFIED
from slides import SlideSpec, make_slide


REPO = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """This checkout's command line (PYTHONPATH, so it holds in any cwd)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "archive.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env)


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "identified.toml"
    path.write_text(IDENTIFIED)
    return path


@pytest.mark.parametrize("command", ["serve", "import", "verify", "broker"])
def test_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "usage: slidearchive" in result.stdout


def test_import_summary_skips_what_is_not_dicom(tmp_path, config):
    folder = tmp_path / "in"
    make_slide(folder / "a", SlideSpec(width=512, height=512, seed=61))
    (folder / "README.md").write_text("# scanner export\n")
    (folder / "a" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    data = tmp_path / "data"
    data.mkdir()
    result = run("import", str(folder), "--data-dir", str(data), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "6 files: 4 stored, 0 already stored, 0 dropped by policy, 2 skipped (not DICOM), 0 failed" in result.stdout
    assert "\r" not in result.stderr  # stderr is a pipe here: plain progress lines, no redraws
    assert "6/6 files stored=4 skipped=2" in result.stderr
    again = run("import", str(folder / "a"), "--data-dir", str(data), "--config", str(config), "-q")
    assert again.returncode == 0 and "4 already stored" in again.stdout
    assert again.stderr == ""
    missing = run("import", str(tmp_path / "nope.dcm"), "--data-dir", str(data))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_import_fails_a_named_file_that_is_not_dicom(tmp_path, config):
    notes = tmp_path / "notes.txt"
    notes.write_text("not DICOM")
    (tmp_path / "data").mkdir()
    result = run("import", str(notes), "--data-dir", str(tmp_path / "data"), "--config", str(config), "-q")
    assert result.returncode == 1
    assert "notes.txt: Cannot understand" in result.stderr and "1 failed" in result.stdout


def test_import_names_truncation(tmp_path, config):
    level0 = make_slide(tmp_path / "in", SlideSpec(width=512, height=512, seed=64, label=False, overview=False))[0]
    whole = level0.read_bytes()
    for cut in (700, len(whole) - 50):
        short = tmp_path / f"cut{cut}.dcm"
        short.write_bytes(whole[:cut])
        (tmp_path / "data").mkdir(exist_ok=True)
        result = run("import", str(short), "--data-dir", str(tmp_path / "data"), "--config", str(config), "-q")
        assert result.returncode == 1
        assert "Cannot understand" in result.stderr and "truncated" in result.stderr, result.stderr
        assert "does not match SOP class" not in result.stderr


@pytest.mark.parametrize("command", [["verify"], ["verify", "--checksums"], ["import", "."], ["reindex"],
                                     ["collection", "add", "1.2.3", "teaching"], ["audit"],
                                     ["keys", "create", "--name", "x", "--grant", "default:write"]])
def test_commands_refuse_a_data_directory_that_does_not_exist(tmp_path, command):
    """Only serve creates an archive: a forgotten --data-dir must not report an empty, healthy one."""
    result = run(*command, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert "no archive at" in result.stderr and "slidearchive-data" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "slidearchive-data").exists()
    elsewhere = run(*command, "--data-dir", str(tmp_path / "typo"), cwd=tmp_path)
    assert elsewhere.returncode == 2 and "does not exist" in elsewhere.stderr
    assert not (tmp_path / "typo").exists()


def test_help_shows_defaults_and_version():
    assert "default: ./slidearchive-data" in " ".join(run("verify", "--help").stdout.split())
    serve = " ".join(run("serve", "--help").stdout.split())
    assert "default 8080" in serve and "default 11112" in serve and "default 127.0.0.1" in serve
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == "slidearchive 0.1.0"


def test_verify_reports_and_repairs(tmp_path, config):
    data = tmp_path / "data"
    data.mkdir()
    make_slide(tmp_path / "in", SlideSpec(width=1024, height=768, seed=63, label=False, overview=False))
    assert run("import", str(tmp_path / "in"), "--data-dir", str(data), "--config", str(config), "-q").returncode == 0
    ok = run("verify", "--data-dir", str(data), "--config", str(config), "--checksums")
    assert ok.returncode == 0, ok.stdout
    stored = sorted(p for p in (data / "storage").rglob("*") if p.is_file() and p.parent.name != "tmp")
    stored[0].unlink()  # bytes lost
    orphan = stored[1].parent / "0123456789abcdef"
    orphan.write_bytes(b"orphan")  # bytes nobody catalogued...
    os.utime(orphan, (time.time() - 7200,) * 2)  # ...two hours ago
    with open(stored[2], "r+b") as f:  # silent corruption
        f.seek(-10, 2)
        f.write(b"XXXXXXXXXX")
    bad = run("verify", "--data-dir", str(data), "--config", str(config), "--checksums")
    assert bad.returncode == 1
    assert "missing files: 1; files without catalog rows: 1; checksum mismatches: 1" in bad.stdout
    fixed = run("verify", "--data-dir", str(data), "--config", str(config), "--repair")
    assert "removed 1 rows without bytes, 1 orphan files" in fixed.stdout
    assert run("verify", "--data-dir", str(data), "--config", str(config)).returncode == 0


def test_verify_leaves_bytes_stored_moments_ago_alone(tmp_path, config):
    """Bytes without a catalog row may be an instance being stored right now (its row commits just
    after them): a fresh one is reported as such, is no problem and survives --repair."""
    data = tmp_path / "data"
    data.mkdir()
    make_slide(tmp_path / "in", SlideSpec(width=512, height=512, seed=64, label=False, overview=False))
    assert run("import", str(tmp_path / "in"), "--data-dir", str(data), "--config", str(config), "-q").returncode == 0
    stored = sorted(p for p in (data / "storage").rglob("*") if p.is_file() and p.parent.name != "tmp")
    fresh = stored[0].parent / "00000000000000000000000000000001"
    fresh.write_bytes(b"being stored")
    spool = data / "storage" / "tmp" / "upload-in-flight"
    spool.write_bytes(b"half")
    fixed = run("verify", "--data-dir", str(data), "--config", str(config), "--repair")
    assert fixed.returncode == 0, fixed.stdout
    assert "files without catalog rows: 0" in fixed.stdout and "temp files: 0" in fixed.stdout
    assert f"no catalog row yet (stored less than 60 min ago, left alone): storage id {fresh.name}" in fixed.stdout
    assert fresh.exists() and spool.exists()
    old = run("verify", "--data-dir", str(data), "--config", str(config), "--orphans-after", "0", "--repair")
    assert "removed 0 rows without bytes, 1 orphan files, 1 temp files" in old.stdout, old.stdout
    assert not fresh.exists() and not spool.exists()


def test_verify_counts_no_orphan_for_bytes_removed_since_its_listing(tmp_path):
    """Found by bench/soak.py on S3: bytes a node removed between verify's listing and its look at
    their age (a deleted instance's, due) were counted as orphans; on local storage the look failed
    with FileNotFoundError."""
    from types import SimpleNamespace

    from archive.cli import _orphans
    from archive.storage import StorageArea

    storage = StorageArea(tmp_path / "storage")
    old = storage.root / "ab" / "cd" / "abcd0000000000000000000000000001"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"orphan")
    os.utime(old, (time.time() - 7200,) * 2)
    gone = "abcd0000000000000000000000000002"  # listed, then removed
    assert _orphans(SimpleNamespace(storage=storage), sorted([old.name, gone]), 3600) == ([old.name], [])


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
    ("[storage]\nurl = '/srv/slides'", "[storage] url: must be empty (the data directory) or look like "
                                        "s3://bucket/prefix"),
    ("[storage]\nurl = 's3://key:secret@bucket/p'", "without credentials"),
    ("[storage]\nurl = 's3://No_Such_Name/p'", "not a valid S3 bucket name"),
    ("[storage]\npart_size_mb = 1", "part_size_mb must be 5-5120"),
    ("[storage]\nframe_cache_mb = -1", "frame_cache_mb must be 0-65536"),
    ("[storage]\nframe_readahead_kb = 20000", "frame_readahead_kb must be 0-16384"),
])
def test_configuration_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "catalog.sqlite").touch()
    result = run("verify", "--data-dir", str(tmp_path / "data"), "--config", str(path))
    assert result.returncode == 2
    assert "configuration error" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr  # a credential written into a URL is not echoed


def test_serve_refuses_a_bad_index_configuration(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[index]\nbackend = 'solr'\n")
    result = run("serve", "--data-dir", str(tmp_path / "data"), "--config", str(path), "--no-dimse")
    assert result.returncode == 2
    assert "configuration error" in result.stderr and "[index]" in result.stderr


def test_bad_remote_option(tmp_path):
    result = run("serve", "--data-dir", str(tmp_path), "--remote", "NOPE")
    assert result.returncode == 2 and "AE=HOST:PORT" in result.stderr


def test_verify_names_corrupt_instances_and_a_re_import_replaces_them(tmp_path, config):
    data = tmp_path / "data"
    data.mkdir()
    slide = make_slide(tmp_path / "in", SlideSpec(width=1024, height=768, seed=65, label=False, overview=False))
    assert run("import", str(tmp_path / "in"), "--data-dir", str(data), "--config", str(config), "-q").returncode == 0
    stored = sorted(p for p in (data / "storage").rglob("*") if p.is_file() and p.parent.name != "tmp")
    with open(stored[0], "r+b") as f:  # silent corruption
        f.seek(-10, 2)
        f.write(b"XXXXXXXXXX")
    repaired = run("verify", "--data-dir", str(data), "--config", str(config), "--checksums", "--repair")
    assert repaired.returncode == 1
    line = next(x for x in repaired.stdout.splitlines() if "corrupt:" in x)
    assert "study 1.2." in line and " series 1.2." in line and "SOP Instance UID 1.2." in line, line
    assert "1 corrupt instance(s) left for you to re-send" in repaired.stdout
    sop_uid = line.split("SOP Instance UID ")[1].split()[0]
    original = next(p for p in slide if sop_uid in p.read_bytes().decode("latin-1"))
    again = run("import", str(original), "--data-dir", str(data), "--config", str(config), "-q")
    assert again.returncode == 0 and "1 stored" in again.stdout, again.stdout + again.stderr
    clean = run("verify", "--data-dir", str(data), "--config", str(config), "--checksums")
    assert clean.returncode == 0, clean.stdout
    assert "checksum mismatches: 0" in clean.stdout and f"{len(slide)} files in storage" in clean.stdout


@pytest.fixture
def relinked(tmp_path):
    """An archive whose policy keeps broker links, and the pseudonym of its one patient."""
    keys = tmp_path / "keys"
    assert run("broker", "keygen", "--out", str(keys)).returncode == 0
    config = tmp_path / "relink.toml"
    config.write_text(f'[deid]\ndefault = "research"\n[deid.policies.research]\nrelink = true\n'
                      f'broker_public_key = "{keys / "broker_public.pem"}"\n')
    data = tmp_path / "data"
    data.mkdir()
    make_slide(tmp_path / "in", SlideSpec(width=512, height=512, seed=66, label=False, overview=False))
    assert run("import", str(tmp_path / "in"), "--data-dir", str(data), "--config", str(config), "-q").returncode == 0
    import sqlite3

    with sqlite3.connect(data / "catalog.sqlite") as db:
        (pseudonym,) = db.execute("SELECT patient_id FROM patient").fetchone()
    return keys, data, pseudonym


def test_broker_reveal_answers_bad_input_in_one_line(tmp_path, relinked):
    keys, data, pseudonym = relinked
    good = run("broker", "reveal", pseudonym, "--private-key", str(keys / "broker_private.pem"), "--data-dir", str(data))
    assert good.returncode == 0, good.stderr
    assert "PatientID" in good.stdout
    (tmp_path / "garbage.pem").write_text("not a key\n")
    assert run("broker", "keygen", "--out", str(tmp_path / "other")).returncode == 0
    cases = {
        "private.pem": (keys / "private.pem", data, pseudonym, "keygen writes broker_private.pem"),
        "garbage": (tmp_path / "garbage.pem", data, pseudonym, "is not an unencrypted X25519 private key"),
        "wrong key": (tmp_path / "other" / "broker_private.pem", data, pseudonym, "cannot be opened"),
        "unknown pseudonym": (keys / "broker_private.pem", data, "DEID-NOSUCHPATIENT", "no link recorded"),
        "no data dir": (keys / "broker_private.pem", tmp_path / "nowhere", pseudonym, "does not exist"),
    }
    for name, (key, data_dir, who, message) in cases.items():
        result = run("broker", "reveal", who, "--private-key", str(key), "--data-dir", str(data_dir))
        assert result.returncode == 2, name
        assert message in result.stderr and "Traceback" not in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
        assert result.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["broker", "keygen", "--out", "/proc/no/such/keys"], "No such file or directory: /proc/no"),
    (["verify", "--config", "/no/such.toml"], "configuration file not found: /no/such.toml"),
    (["serve", "--remote", "VIEWER"], "expected AE=HOST:PORT"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, args, message):
    (tmp_path / "data").mkdir()
    result = run(*args, "--data-dir", str(tmp_path / "data")) if args[0] != "broker" else run(*args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_start_sh_does_not_reinstall_when_everything_is_installed(tmp_path):
    """scripts/start.sh installs only what scripts/installed.py finds missing (here: nothing)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "python3-calls"
    shim = bin_dir / "python3"  # records how start.sh runs Python, then runs it
    shim.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    assert subprocess.run([sys.executable, str(REPO / "scripts" / "installed.py")]).returncode == 0
    result = subprocess.run(["bash", str(REPO / "scripts" / "start.sh"), "--help"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0 and "usage: slidearchive serve" in result.stdout, result.stderr
    ran = calls.read_text()
    assert "installed.py" in ran and "-m archive.cli serve --help" in ran
    assert "pip" not in ran
