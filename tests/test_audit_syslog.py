"""The audit trail forwarded to a real audit repository (rsyslogd, RFC 5425 syslog over TLS with client
certificates), through an outage and its recovery: nothing blocks, nothing is lost, order is kept."""
from __future__ import annotations

import base64
import json
import time

import pytest
import requests

from archive.audit.log import read_records
from conftest import IDENTIFIED
from rsyslog_receiver import RSYSLOGD, Rsyslog
from tls_pki import Authority

pytestmark = pytest.mark.slow


def query_limit(message) -> str | None:
    """The ``limit`` a Query message records (its ParticipantObjectQuery is base64 JSON)."""
    element = message.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    return None if element is None else json.loads(base64.b64decode(element.text)).get("limit")


def wait(predicate, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def repository(tmp_path):
    assert RSYSLOGD.exists(), "rsyslogd not installed (scripts/test.sh installs rsyslog and rsyslog-gnutls)"
    ca = Authority(tmp_path / "pki")
    key_cert = ca.issue("repository", server=True)
    receiver = Rsyslog(tmp_path / "rsyslog", ca.cert_path, key_cert[1], key_cert[0])
    receiver.client = ca.issue("archive-client")
    receiver.ca = ca.cert_path
    yield receiver.start()
    receiver.stop()


def forwarding_to(repository, key_cert: tuple) -> str:
    key, cert = key_cert
    return IDENTIFIED + f"""
[audit.syslog]
host = "127.0.0.1"
port = {repository.port}
ca_file = "{repository.ca}"
cert_file = "{cert}"
key_file = "{key}"
retry_seconds = 1
"""


def test_outage_delays_records_and_loses_none(repository, make_server):
    server = make_server(forwarding_to(repository, repository.client), dimse=False)
    assert requests.get(f"{server.dicomweb}/studies", params={"limit": "1"}).ok
    assert wait(lambda: any(query_limit(m) == "1" for _, _, m in repository.messages())), \
        (repository.directory / "rsyslogd.log").read_text()[-2000:]
    msgid, _, start = repository.messages()[0]
    assert msgid == "IHE+RFC-3881"
    assert start.find("EventIdentification/EventTypeCode").get("originalText") == "Application Start"

    repository.stop()  # the outage
    started = time.time()
    for n in range(2, 32):
        assert requests.get(f"{server.dicomweb}/studies", params={"limit": str(n)}, timeout=10).ok
    assert time.time() - started < 30  # requests did not wait for the repository
    spooled = lambda: [r for r in read_records(server.data_dir / "audit") if r["event"] == "Query"]  # noqa: E731
    assert wait(lambda: len(spooled()) == 31)
    assert not any(query_limit(m) == "31" for _, _, m in repository.messages())

    repository.start()  # recovery on the same port
    every_limit = {str(n) for n in range(1, 32)}
    # Forwarded in the log's order, which is not request order (two HTTP workers append to it):
    # "31" may come before others, so wait for all of them.
    assert wait(lambda: {query_limit(m) for _, _, m in repository.messages()} >= every_limit, timeout=60)
    received = repository.messages()
    first_seen: list[str] = []
    for _, position, message in received:
        if position not in first_seen:
            first_seen.append(position)
    limits = [query_limit(m) for _, _, m in received if query_limit(m)]
    logged = [r for r in read_records(server.data_dir / "audit") if r["event"] == "Query"]
    in_log_order = [json.loads(base64.b64decode(r["AuditMessage"]["ParticipantObjectIdentification"][0]
                                                ["ParticipantObjectQuery"]))["limit"] for r in logged]
    assert sorted(map(int, in_log_order)) == list(range(1, 32))
    assert list(dict.fromkeys(limits)) == in_log_order  # every record, in the log's order
    order = [(p.split(":")[0], int(p.split(":")[1])) for p in first_seen]
    assert order == sorted(order)

    server.stop()  # the stop is drained to the repository before serve exits
    assert wait(lambda: any(m.find("EventIdentification/EventTypeCode") is not None and
                            m.find("EventIdentification/EventTypeCode").get("originalText") == "Application Stop"
                            for _, _, m in repository.messages()))


def test_a_repository_that_rejects_our_certificate_gets_nothing_and_blocks_nothing(repository, make_server, tmp_path):
    stranger = Authority(tmp_path / "stranger", "stranger CA").issue("not-the-archive")
    server = make_server(forwarding_to(repository, stranger), dimse=False)
    for n in range(5):
        assert requests.get(f"{server.dicomweb}/studies", params={"limit": str(n)}, timeout=10).ok
    time.sleep(3)
    assert repository.messages() == []
    assert len([r for r in read_records(server.data_dir / "audit") if r["event"] == "Query"]) == 5
    assert "unreachable" in server.log_path.read_text()
