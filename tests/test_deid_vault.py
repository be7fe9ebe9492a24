"""Honest broker: links sealed to the broker's key, reveal + audit, and the broker CLI."""
from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path

import pydicom
import pytest

from deid import DeidentificationError, LinkVault, Policy, deidentify
from deid.cli import cmd_keygen, register, vault_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_wsi  # noqa: E402

KEY = b"vault-test-key-0123456789abcdef0"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slidearchive")
    register(p.add_subparsers(dest="command", required=True))
    return p


def run(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    assert run("broker", "keygen", "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def level0(tmp_path_factory: pytest.TempPathFactory) -> pydicom.Dataset:
    level = make_wsi(tmp_path_factory.mktemp("wsi"), "--width", "512", "--height", "512")["level0"]
    return pydicom.dcmread(level, stop_before_pixels=True)


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(keys: Path) -> None:
    private = keys / "broker_private.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in (keys / "broker_public.pem").read_bytes()
    args = parser().parse_args(["broker", "keygen", "--out", str(keys)])
    assert args.func is cmd_keygen
    assert args.func(args) == 1


def test_relink_records_sealed_links_and_reveal_audits(tmp_path: Path, keys: Path, level0: pydicom.Dataset,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    vault = LinkVault(vault_path(data_dir))
    policy = Policy(name="research", key=KEY, relink=True, broker_public_key=keys / "broker_public.pem")
    out = deidentify(level0, policy, vault=vault).dataset
    deidentify(level0, policy, vault=vault)  # a re-send adds nothing
    assert vault.count() == 4  # patient, study, series, instance

    raw = vault.path.read_bytes()
    for original in (b"PAT-0001", b"DOE^JANE", b"ACC-0001", b"SLIDE-ACC-0001",
                     str(level0.StudyInstanceUID).encode(), str(level0.SOPInstanceUID).encode()):
        assert original not in raw
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600

    patient = vault.reveal(out.PatientID, keys / "broker_private.pem", who="broker-alice")
    assert patient["PatientID"] == "PAT-0001" and patient["PatientName"] == "DOE^JANE"
    study = vault.reveal(str(out.StudyInstanceUID), keys / "broker_private.pem", who="broker-alice")
    assert study["StudyInstanceUID"] == level0.StudyInstanceUID and study["AccessionNumber"] == "ACC-0001"
    instance = vault.reveal(str(out.SOPInstanceUID), keys / "broker_private.pem")
    assert instance["ContainerIdentifier"] == level0.ContainerIdentifier

    audit = [json.loads(line) for line in vault.audit_log.read_text().splitlines()]
    assert [a["pseudonym"] for a in audit] == [out.PatientID, str(out.StudyInstanceUID), str(out.SOPInstanceUID)]
    assert audit[0]["who"] == "broker-alice" and audit[0]["action"] == "reveal" and "time" in audit[0]
    text = vault.audit_log.read_text()
    assert "PAT-0001" not in text and "DOE" not in text and "ACC-0001" not in text

    # The CLI handler does the same, with its own audit log file.
    log = tmp_path / "cli-audit.log"
    code = run("broker", "reveal", out.PatientID, "--private-key", str(keys / "broker_private.pem"),
               "--data-dir", str(data_dir), "--audit-log", str(log), "--who", "broker-bob")
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["PatientID"] == "PAT-0001"
    entry = json.loads(log.read_text())
    assert entry["who"] == "broker-bob" and entry["pseudonym"] == out.PatientID
    assert run("broker", "reveal", "DEID-NOSUCH", "--private-key", str(keys / "broker_private.pem"),
               "--data-dir", str(data_dir), "--audit-log", str(log)) == 2


def test_another_key_cannot_reveal(tmp_path: Path, keys: Path, level0: pydicom.Dataset) -> None:
    other = tmp_path / "other"
    assert run("broker", "keygen", "--out", str(other)) == 0
    vault = LinkVault(tmp_path / "links.sqlite")
    policy = Policy(name="r", key=KEY, relink=True, broker_public_key=keys / "broker_public.pem")
    out = deidentify(level0, policy, vault=vault).dataset
    with pytest.raises(Exception) as info:
        vault.reveal(out.PatientID, other / "broker_private.pem")
    assert "PAT-0001" not in str(info.value)


def test_no_relink_keeps_nothing(tmp_path: Path, level0: pydicom.Dataset) -> None:
    vault = LinkVault(tmp_path / "broker" / "links.sqlite")
    deidentify(level0, Policy(name="basic", key=KEY), vault=vault)
    assert vault.count() == 0
    assert not vault.path.exists()


def test_relink_without_vault_is_refused(keys: Path, level0: pydicom.Dataset) -> None:
    policy = Policy(name="research", key=KEY, relink=True, broker_public_key=keys / "broker_public.pem")
    with pytest.raises(DeidentificationError) as info:
        deidentify(level0, policy, vault=None)
    assert "research" in str(info.value) and "PAT-0001" not in str(info.value)
