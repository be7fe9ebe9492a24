"""The audit API (archive/audit/trail.py): messages, redaction, frame summaries, overflow, rotation."""
from __future__ import annotations

import base64
import dataclasses
import json
import multiprocessing
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from archive.audit import AuditTrail
from archive.audit.log import log_files, read_records
from archive.audit.messages import to_xml
from archive.config import AuditSettings, ConfigError, load_settings


@dataclasses.dataclass(frozen=True)
class Who:
    subject: str
    kind: str = "user"


def trail(tmp_path: Path, **changes) -> AuditTrail:
    return AuditTrail(dataclasses.replace(AuditSettings(), **changes), tmp_path, "SLIDEARCHIVE")


def records(tmp_path: Path) -> list[dict]:
    return list(read_records(tmp_path / "audit"))


def query_of(record: dict) -> dict:
    obj = record["AuditMessage"]["ParticipantObjectIdentification"][-1]
    return json.loads(base64.b64decode(obj["ParticipantObjectQuery"]))


def test_query_message_has_the_standard_parts_and_no_typed_names(tmp_path):
    audit = trail(tmp_path)
    audit.record("Query", principal=Who("alice"), remote="127.0.0.1",
                 query={"PatientName": "Doe^John", "00100020": "MRN-123", "StudyInstanceUID": "1.2.3",
                        "limit": "10", "StudyDescription": "biopsy of John"})
    assert audit.flush()
    (line,) = records(tmp_path)
    assert (line["event"], line["user"], line["remote"]) == ("Query", "alice", "127.0.0.1")
    message = line["AuditMessage"]
    assert message["EventIdentification"]["EventID"]["csd-code"] == "110112"
    requestor, archive = message["ActiveParticipant"]
    assert requestor == {"UserID": "alice", "UserIsRequestor": True, "NetworkAccessPointID": "127.0.0.1",
                         "NetworkAccessPointTypeCode": "2"}
    assert archive["UserIsRequestor"] is False and archive["AlternativeUserID"] == "AETITLES=SLIDEARCHIVE"
    assert query_of(line) == {"PatientName": "<redacted>", "00100020": "<redacted>", "StudyInstanceUID": ["1.2.3"],
                              "limit": "10", "StudyDescription": "<redacted>"}
    text = (tmp_path / "audit").joinpath(log_files(tmp_path / "audit")[0].name).read_text()
    assert "Doe" not in text and "MRN-123" not in text and "John" not in text


def test_event_types_outcome_and_xml(tmp_path):
    audit = trail(tmp_path)
    audit.record("ApplicationActivity", principal=None, detail={"type": "Application Stop"})
    audit.record("UserAuthentication", principal=Who("mallory"), outcome=4, remote="10.0.0.9",
                 detail="bad signature")
    audit.record("DICOMInstancesDeleted", principal=Who("bob"), study="1.2.3", series="1.2.3.4",
                 instances=[("1.2.840.10008.5.1.4.1.1.77.1.6", "1.2.3.4.5")])
    assert audit.flush()
    stop, login, deleted = records(tmp_path)
    ident = stop["AuditMessage"]["EventIdentification"]
    assert ident["EventTypeCode"][0]["csd-code"] == "110121" and ident["EventActionCode"] == "E"
    assert stop["kind"] == "system" and len(stop["AuditMessage"]["ActiveParticipant"]) == 1
    ident = login["AuditMessage"]["EventIdentification"]
    assert (ident["EventOutcomeIndicator"], ident["EventTypeCode"][0]["csd-code"]) == ("4", "110122")
    assert ident["EventOutcomeDescription"] == "bad signature"
    study = deleted["AuditMessage"]["ParticipantObjectIdentification"][0]
    assert deleted["AuditMessage"]["EventIdentification"]["EventActionCode"] == "D"
    assert study["ParticipantObjectID"] == "1.2.3" and study["ParticipantObjectIDTypeCode"]["csd-code"] == "110180"
    assert study["ParticipantObjectDescription"]["SOPClass"][0]["Instance"] == [{"UID": "1.2.3.4.5"}]
    root = ET.fromstring(to_xml(deleted["AuditMessage"]))
    assert root.tag == "AuditMessage"
    assert root.find("EventIdentification/EventID").get("csd-code") == "110105"
    assert root.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "1.2.3"


def test_bad_calls_never_raise_and_text_in_uid_places_is_not_recorded(tmp_path):
    audit = trail(tmp_path)
    audit.record("NoSuchEvent", principal=None)
    audit.record("Query", principal=object(), query={"a": 1})  # no subject: logged, not raised
    audit.record("DICOMInstancesAccessed", principal=Who("eve"), study="Doe^John", instances=["not a uid"])
    audit.frame(None, "1.2", "1.2.3", "1.2.3.4", None)
    assert audit.flush()
    lines = records(tmp_path)
    assert [r["event"] for r in lines] == ["DICOMInstancesAccessed", "BeginTransferringDICOMInstances"]
    assert "Doe" not in json.dumps(lines) and lines[0]["study"] == "<invalid>"
    assert lines[1]["user"] == "anonymous"


def test_frames_are_summarised_per_principal_and_series(tmp_path):
    audit = trail(tmp_path, frame_interval=0.3)
    for _ in range(500):
        audit.frame(Who("alice"), "1.2", "1.2.3", "1.2.3.4", "127.0.0.1")
        audit.frame(Who("bob"), "1.2", "1.2.3", "1.2.3.5", "127.0.0.2")
    audit.frame(Who("alice"), "1.2", "1.2.9", "1.2.9.1", "127.0.0.1")
    time.sleep(1.5)  # the writer ticks each second: the interval is over, the counts are written
    for _ in range(7):
        audit.frame(Who("alice"), "1.2", "1.2.3", "1.2.3.6", "127.0.0.1")
    audit.close()
    lines = records(tmp_path)
    begins = [(r["user"], r["series"]) for r in lines if r["event"] == "BeginTransferringDICOMInstances"]
    assert sorted(begins) == [("alice", "1.2.3"), ("alice", "1.2.9"), ("bob", "1.2.3")]
    sent = [(r["user"], r["series"], r["frames"]) for r in lines if r["event"] == "DICOMInstancesTransferred"]
    assert sorted(sent) == [("alice", "1.2.3", 7), ("alice", "1.2.3", 500), ("alice", "1.2.9", 1), ("bob", "1.2.3", 500)]
    assert len(lines) == 7  # never one line per frame
    detail = {d["type"]: base64.b64decode(d["value"]).decode() for r in lines if r.get("frames") == 7
              for d in r["AuditMessage"]["ParticipantObjectIdentification"][0]["ParticipantObjectDetail"]}
    assert detail == {"SeriesInstanceUID": "1.2.3", "frames": "7"}


def test_a_full_queue_drops_counts_and_reports(tmp_path):
    audit = trail(tmp_path, queue_size=5)
    audit.record("Query", principal=Who("a"), query={})  # starts the writer
    audit._lock.acquire()  # hold the writer inside its frame summary step: nothing drains
    try:
        time.sleep(1.2)
        for _ in range(50):
            audit.record("Query", principal=Who("a"), query={})
    finally:
        audit._lock.release()
    assert audit.flush()
    lines = records(tmp_path)
    assert audit.dropped >= 40
    alert = [r for r in lines if r["event"] == "SecurityAlert"]
    assert len(alert) == 1
    ident = alert[0]["AuditMessage"]["EventIdentification"]
    assert ident["EventTypeCode"][0]["csd-code"] == "110133"
    assert ident["EventOutcomeDescription"].startswith(f"{audit.dropped} audit records dropped")
    assert len([r for r in lines if r["event"] == "Query"]) == 51 - audit.dropped


def _append_many(directory: str, who: str) -> None:
    audit = AuditTrail(dataclasses.replace(AuditSettings(), rotate_bytes=20000, fsync=False), Path(directory))
    for i in range(300):
        audit.record("Query", principal=Who(who), query={"limit": str(i)})
    audit.close()


def test_processes_share_the_log_and_it_rotates_by_size(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), f"p{n}")) for n in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    files = log_files(tmp_path / "audit")
    assert len(files) >= 2  # a batch is written whole, so a file may pass the size by one batch
    lines = [line for f in files for line in f.read_bytes().splitlines()]
    parsed = [json.loads(line) for line in lines]  # no torn or interleaved line
    for n in range(3):
        mine = [int(query_of(r)["limit"]) for r in parsed if r["user"] == f"p{n}"]
        assert mine == list(range(300))


def test_configuration_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, words in [('[audit]\nqueue_size = "big"', "[audit] queue_size must be int"),
                        ("[audit]\nnope = 1", "[audit] unknown keys: nope"),
                        ('[audit.syslog]\nport = 6514', "[audit.syslog] host is required"),
                        ('[audit.syslog]\nhost = "x"\ncert_file = "c.pem"', "cert_file and key_file go together"),
                        ('[audit.syslog]\nhost = "x"\nca_file = "/nonexistent.pem"', "ca_file: file not found"),
                        ('[tls]\nhttp = true', "[tls] cert_file is required"),
                        ('[tls]\ndimse = "sometimes"', '[tls] dimse must be "off", "separate" or "only"'),
                        ('[tls]\nmin_version = "1.1"', "TLS 1.2 or newer"),
                        ('[tls]\nrequire_client_cert = true', "require_client_cert needs ca_file"),
                        ('[server]\ntrusted_proxies = ["nginx"]', "'nginx' is not an IP address or network"),
                        ('[[dimse.remote]]\nae_title = "X"\nhost = "h"\nport = 1\ntls = true',
                         "with tls = true needs [tls] cert_file and key_file"),
                        ('[[dimse.remote]]\nae_title = "X"\nhost = "h"\nport = 1\ntls = "yes"',
                         "tls true or false")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_settings(bad, data_dir=str(tmp_path))


def test_broker_reveal_is_in_the_audit_trail(tmp_path):
    from archive.cli import main
    from deid.vault import generate_keypair

    private_pem, _ = generate_keypair()
    key = tmp_path / "broker.pem"
    key.write_bytes(private_pem)
    data = tmp_path / "data"
    data.mkdir()
    assert main(["broker", "reveal", "Doe^Typed", "--private-key", str(key), "--data-dir", str(data),
                 "--who", "broker-carol"]) == 2
    (alert,) = records(data)
    ident = alert["AuditMessage"]["EventIdentification"]
    assert (alert["event"], alert["user"], alert["outcome"]) == ("SecurityAlert", "broker-carol", 4)
    assert ident["EventTypeCode"][0]["originalText"] == "Use of Restricted Function"
    assert "Doe" not in json.dumps(alert)  # an argument that opened no link may be typed PHI


def _appends(monkeypatch) -> list[int]:
    """The number of lines of each batch the writer appends (each one write and fdatasync)."""
    from archive.audit import log as audit_log

    batches: list[int] = []
    real = audit_log.AuditLogFile.append

    def append(self, data: bytes, now):
        batches.append(data.count(b"\n"))
        return real(self, data, now)
    monkeypatch.setattr(audit_log.AuditLogFile, "append", append)
    return batches


def test_records_close_behind_a_write_share_the_next_one(tmp_path, monkeypatch):
    from archive.audit import trail as audit_trail

    monkeypatch.setattr(audit_trail, "_GATHER", 600.0)  # long: a loaded machine cannot split the batch
    batches = _appends(monkeypatch)
    audit = trail(tmp_path)
    audit.record("Query", principal=Who("alice"), query={"limit": "1"})
    assert audit.flush()
    for n in (2, 3):
        audit.record("Query", principal=Who("alice"), query={"limit": str(n)})
        time.sleep(0.1)  # the writer has taken up the first: it gathers instead of writing it alone
    assert audit.flush(timeout=60)  # answered: flush cut the gathering short
    assert batches == [1, 2]
    assert [query_of(r)["limit"] for r in records(tmp_path)] == ["1", "2", "3"]


def test_a_record_after_a_quiet_spell_is_written_at_once(tmp_path, monkeypatch):
    from archive.audit import trail as audit_trail

    monkeypatch.setattr(audit_trail, "_GATHER", 600.0)
    audit = trail(tmp_path)
    audit.record("Query", principal=Who("alice"), query={"limit": "1"})
    deadline = time.monotonic() + 30  # without a flush: no write before it, so no gathering
    while not records(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [query_of(r)["limit"] for r in records(tmp_path)] == ["1"]
    audit.close()
