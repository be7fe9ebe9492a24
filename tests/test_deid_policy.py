"""Policies from the [deid] TOML table: defaults, source rules, keys, and refusals."""
from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from deid import Option, Policies, Policy, PolicyError, load_policies
from deid.vault import generate_keypair


def config(pub: Path) -> dict:
    text = f"""
[deid]
default = "basic"
[deid.policies.basic]
[deid.policies.research]
options = ["retain_longitudinal_modified", "retain_device_identity"]
relink = true
broker_public_key = "{pub}"
overview = "blank"
overview_label_area = [0, 0, 400, 400]
[deid.policies.identified]
identified = true
[deid.sources]
ae = {{ "SCANNER1" = "research", "PACS" = "identified" }}
collection = {{ "default" = "basic" }}
"""
    return tomllib.loads(text)["deid"]


def test_example_configuration(tmp_path: Path) -> None:
    pub = tmp_path / "pub.pem"
    pub.write_bytes(generate_keypair()[1])
    policies = load_policies(config(pub), tmp_path / "data")
    assert isinstance(policies, Policies)
    research = policies.for_origin("SCANNER1", "default")
    assert research.name == "research" and research.relink
    assert research.options == {Option.RETAIN_LONGITUDINAL_MODIFIED_DATES, Option.RETAIN_DEVICE_IDENTITY}
    assert research.overview == "blank" and research.overview_label_area == (0, 0, 400, 400)
    assert policies.for_origin("SCANNER1  ", "x").name == "research"
    assert policies.for_origin("PACS", "default").identified
    assert policies.for_origin("OTHER", "default").name == "basic"
    assert policies.for_origin(None, "anything").name == "basic"
    # Policies without key_file share the generated archive key.
    assert research.key == policies["basic"].key and len(research.key) == 32
    assert repr(research.key) not in repr(research)  # the key never shows up in a log line


def test_nothing_configured_is_basic_with_a_generated_key(tmp_path: Path) -> None:
    policies = load_policies({}, tmp_path)
    policy = policies.for_origin(None, "default")
    assert policy.name == "basic" and not policy.options and not policy.identified
    assert policy.label == "drop" and policy.overview == "drop" and not policy.relink
    key_file = tmp_path / "secrets" / "deid.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes() == policy.key and len(policy.key) == 32
    # Same key on the next start; another data dir gets another key.
    assert load_policies(None, tmp_path).for_origin(None, "x").key == policy.key
    assert load_policies(None, tmp_path / "other").for_origin(None, "x").key != policy.key


def test_key_file_is_used(tmp_path: Path) -> None:
    key_file = tmp_path / "k.hex"
    key_file.write_text("00" * 16 + "ff" * 16 + "\n")
    policies = load_policies({"policies": {"p": {"key_file": str(key_file)}}, "default": "p"}, tmp_path)
    assert policies["p"].key == bytes(16) + b"\xff" * 16
    assert not (tmp_path / "secrets" / "deid.key").exists()


@pytest.mark.parametrize("spec, message", [
    ({"options": ["no_such_option"]}, "unknown de-identification option"),
    ({"options": ["retain_longitudinal_full_dates", "retain_longitudinal_modified"]}, "not both"),
    ({"overview": "blank"}, "overview_label_area"),
    ({"relink": True}, "broker_public_key"),
    ({"relink": True, "broker_public_key": "/nonexistent/pub.pem"}, "cannot read"),
    ({"label": "keep"}, "label"),
    ({"colour": "blue"}, "unknown settings"),
])
def test_invalid_policies_are_refused(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policies({"policies": {"p": spec}, "default": "p"}, tmp_path)


def test_undefined_policy_reference_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="undefined policy"):
        load_policies({"sources": {"ae": {"X": "nope"}}}, tmp_path)


def test_policy_needs_a_real_key() -> None:
    with pytest.raises(PolicyError):
        Policy(name="p")
    assert Policy(name="identified", identified=True).identified


def test_hand_built_policy_accepts_option_names() -> None:
    policy = Policy(name="p", key=bytes(32), options=frozenset({"retain_uids", "clean_descriptors"}),
                    overview="blank", overview_label_area=[1, 2, 3, 4])  # type: ignore[arg-type]
    assert policy.options == {Option.RETAIN_UIDS, Option.CLEAN_DESCRIPTORS}
    assert policy.overview_label_area == (1, 2, 3, 4)
