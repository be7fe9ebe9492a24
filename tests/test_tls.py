"""TLS: DIMSE associations over TLS (PS3.15 Annex B) with DCMTK's echoscu/storescu +tls, and HTTPS from granian."""
from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
import requests

from archive.audit.log import read_records
from conftest import IDENTIFIED, Server, _wait_port, free_port
from slides import SlideSpec, make_slide
from test_dimse_tools import AE, DCMTK, dcmtk, needs_dcmtk
from tls_pki import Authority

pytestmark = needs_dcmtk


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory)
    other = Authority(directory / "other", "someone else's CA")
    return {"ca": ca.cert_path, "server": ca.issue("archive", server=True), "client": ca.issue("scanner"),
            "stranger": other.issue("stranger"), "destination": ca.issue("viewer-node", server=True)}


def tls_config(pki, **fields) -> str:
    key, cert = pki["server"]
    lines = [f'cert_file = "{cert}"', f'key_file = "{key}"', f'ca_file = "{pki["ca"]}"']
    lines += [f"{k} = {v}" for k, v in fields.items()]
    return IDENTIFIED + "[tls]\n" + "\n".join(lines) + "\n"


class TlsServer(Server):
    """The fixture's server with the TLS DIMSE port chosen free, and HTTPS when the config says so."""

    def __init__(self, root, config_for, https: bool = False):
        self.tls_port = free_port()
        super().__init__(root, config_for(self.tls_port))
        self.https = https

    @property
    def url(self) -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.http_port}"


def echo(port: int, *tls: str) -> subprocess.CompletedProcess:
    return dcmtk("echoscu", *tls, "-aet", "TLSSCU", "-aec", AE, "127.0.0.1", str(port), timeout=60)


def alerts(server) -> list[dict]:
    return [r for r in read_records(server.data_dir / "audit") if r["event"] == "SecurityAlert"]


@pytest.fixture(scope="module")
def dimse_tls(pki, tmp_path_factory):
    """DIMSE over TLS on a separate port, client certificates from the test CA required; plain DIMSE beside it."""
    server = TlsServer(tmp_path_factory.mktemp("tls"), lambda port: tls_config(
        pki, require_client_cert="true", dimse='"separate"', dimse_port=port)).start()
    yield server
    server.stop()


def test_echo_and_store_over_tls_with_a_client_certificate(dimse_tls, pki, tmp_path):
    key, cert = pki["client"]
    with_cert = ["+tls", str(key), str(cert), "+cf", str(pki["ca"])]
    result = echo(dimse_tls.tls_port, *with_cert)
    assert result.returncode == 0, result.stdout + result.stderr
    assert echo(dimse_tls.dimse_port).returncode == 0  # the plain port stays as it was
    paths = make_slide(tmp_path / "slide", SlideSpec(width=256, height=256, seed=61, label=False, overview=False))
    stored = dcmtk("storescu", "-R", "-xy", *with_cert, "-aet", "SCANNER", "-aec", AE, "127.0.0.1", str(dimse_tls.tls_port),
                   *map(str, paths))
    assert stored.returncode == 0, stored.stdout + stored.stderr
    from pydicom import dcmread

    study = dcmread(paths[0]).StudyInstanceUID
    found = requests.get(f"{dimse_tls.dicomweb}/studies", params={"StudyInstanceUID": study}).json()
    assert len(found) == 1
    deadline = time.monotonic() + 10  # the audit writer batches records for up to 0.2 s
    while True:
        transfers = [r for r in read_records(dimse_tls.data_dir / "audit")
                     if r["event"] == "DICOMInstancesTransferred" and r["user"] == "SCANNER"]
        if len(transfers) >= len(paths) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(transfers) == len(paths) and transfers[0]["remote"] == "127.0.0.1"


def test_clients_without_a_trusted_certificate_are_refused_and_audited(dimse_tls, pki):
    before = len(alerts(dimse_tls))
    anonymous = echo(dimse_tls.tls_port, "+tla", "+cf", str(pki["ca"]))
    assert anonymous.returncode != 0
    key, cert = pki["stranger"]
    stranger = echo(dimse_tls.tls_port, "+tls", str(key), str(cert), "+cf", str(pki["ca"]))
    assert stranger.returncode != 0
    plain = echo(dimse_tls.tls_port)  # plain DICOM to the TLS port
    assert plain.returncode != 0
    deadline = time.time() + 10
    while len(alerts(dimse_tls)) < before + 3 and time.time() < deadline:
        time.sleep(0.2)
    new = alerts(dimse_tls)[before:]
    assert len(new) == 3
    for alert in new:
        ident = alert["AuditMessage"]["EventIdentification"]
        assert ident["EventTypeCode"][0]["originalText"] == "Node Authentication"
        assert ident["EventOutcomeIndicator"] == "4" and alert["remote"] == "127.0.0.1"
    key, cert = pki["client"]
    assert echo(dimse_tls.tls_port, "+tls", str(key), str(cert), "+cf", str(pki["ca"])).returncode == 0


def test_a_silent_connection_does_not_block_the_tls_listener(dimse_tls, pki):
    key, cert = pki["client"]
    with socket.create_connection(("127.0.0.1", dimse_tls.tls_port)):  # connects and says nothing
        started = time.time()
        result = echo(dimse_tls.tls_port, "+tls", str(key), str(cert), "+cf", str(pki["ca"]))
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.time() - started < 30  # bounded by echoscu's own timeout, not the archive's


@pytest.fixture(scope="module")
def https(pki, tmp_path_factory):
    """HTTPS and TLS-only DIMSE, TLS 1.3 at least, client certificates optional."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SSL_CERT_FILE", str(pki["ca"]))  # the fixture's health check verifies the test CA
    server = TlsServer(tmp_path_factory.mktemp("https"), lambda port: tls_config(
        pki, http="true", dimse='"only"', min_version='"1.3"'), https=True).start()
    yield server
    server.stop()
    mp.undo()


def test_https_serves_dicomweb_with_https_urls(https, pki, tmp_path):
    paths = make_slide(tmp_path / "slide", SlideSpec(width=256, height=256, seed=62, label=False, overview=False))
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session
    from pydicom import dcmread

    session = create_session()
    session.verify = str(pki["ca"])
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment replaces verify
    client = DICOMwebClient(url=https.dicomweb, session=session)
    ds = dcmread(paths[0])
    client.store_instances([ds])
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["7FE00010"]["BulkDataURI"].startswith(f"https://127.0.0.1:{https.http_port}/dicomweb/studies/")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{https.http_port}/health", timeout=10)


@pytest.mark.parametrize("port_of", ["http_port", "dimse_port"])
def test_tls_below_the_configured_minimum_is_refused(https, pki, port_of):
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", getattr(https, port_of)), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    strict = ssl.create_default_context(cafile=str(pki["ca"]))
    with socket.create_connection(("127.0.0.1", getattr(https, port_of)), timeout=10) as raw:
        with strict.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.3"


def test_tls_only_dimse_takes_a_client_without_certificate_when_not_required(https, pki):
    result = echo(https.dimse_port, "+tla", "+cf", str(pki["ca"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert echo(https.dimse_port).returncode != 0  # no plain DICOM on a TLS-only port


def tls_storescp(directory, key_cert, ca, port: int) -> subprocess.Popen:
    """DCMTK's storescp over TLS (peer certificate required, DCMTK's default), AE TLSDEST."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = key_cert
    return subprocess.Popen([str(DCMTK / "storescp"), "+tls", str(key), str(cert), "+cf", str(ca), "-aet", "TLSDEST",
                             "+xa", "-od", str(directory), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [True, False], ids=["destination-trusted", "destination-unknown-ca"])
def test_c_move_to_a_tls_destination(pki, tmp_path, trusted):
    """The archive opens the sub-association over TLS; a destination whose certificate it cannot check gets nothing."""
    ca = Authority(tmp_path / "dest-pki", "destination CA") if not trusted else None
    dest_cert = pki["destination"] if trusted else ca.issue("destination", server=True)
    dest_port = free_port()
    receiver = tls_storescp(tmp_path / "received", dest_cert, pki["ca"], dest_port)
    try:
        assert _wait_port(dest_port, time.time() + 20)
        config = tls_config(pki) + (f'[[dimse.remote]]\nae_title = "TLSDEST"\nhost = "127.0.0.1"\n'
                                    f'port = {dest_port}\ntls = true\n')
        server = Server(tmp_path / "server", config).start()
        try:
            paths = make_slide(tmp_path / "slide", SlideSpec(width=256, height=256, seed=63, label=False,
                                                             overview=False))
            assert dcmtk("storescu", "-R", "-xy", "-aec", AE, "127.0.0.1", str(server.dimse_port),
                         *map(str, paths)).returncode == 0
            from pydicom import dcmread

            study = dcmread(paths[0]).StudyInstanceUID
            moved = dcmtk("movescu", "-S", "-aec", AE, "-aem", "TLSDEST", "-k", "QueryRetrieveLevel=STUDY",
                          "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(server.dimse_port))
            received = list((tmp_path / "received").iterdir())
            if trusted:
                assert moved.returncode == 0, moved.stdout + moved.stderr
                assert len(received) == len(paths)
            else:
                assert received == []
                assert echo(server.dimse_port).returncode == 0  # the archive keeps serving
        finally:
            server.stop()
    finally:
        receiver.terminate()
        receiver.wait(10)


def test_https_with_required_client_certificates(pki, tmp_path, monkeypatch):
    """[tls] require_client_cert also holds for HTTPS: no certificate, or one from another CA, gets no answer."""
    key, cert = pki["client"]
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(cert, key)
    import urllib.request

    opener = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, **kw: opener(url, context=context, **kw))
    server = TlsServer(tmp_path / "server", lambda port: tls_config(pki, http="true", require_client_cert="true"),
                       https=True)
    server.start()
    try:
        ok = requests.get(f"{server.url}/health", verify=str(pki["ca"]), cert=(str(cert), str(key)), timeout=10)
        assert ok.status_code == 200
        stranger_key, stranger_cert = pki["stranger"]
        for client_cert in (None, (str(stranger_cert), str(stranger_key))):
            with pytest.raises(requests.exceptions.RequestException):
                requests.get(f"{server.url}/health", verify=str(pki["ca"]), cert=client_cert, timeout=10)
    finally:
        server.stop()


@pytest.mark.slow
def test_a_stalled_handshake_is_dropped_after_acse_timeout(pki, tmp_path):
    server = TlsServer(tmp_path / "server", lambda port: tls_config(pki, dimse='"only"')
                       + "[dimse]\nacse_timeout = 2\n").start()
    try:
        with socket.create_connection(("127.0.0.1", server.dimse_port), timeout=30) as raw:
            raw.sendall(b"\x16\x03\x01\x00\xff")  # a TLS record header announcing a ClientHello that never comes
            started = time.time()
            try:
                assert raw.recv(1) == b""  # the archive closed it
            except ConnectionResetError:
                pass
            assert time.time() - started < 20
        deadline = time.time() + 10
        while not alerts(server) and time.time() < deadline:
            time.sleep(0.2)
        (alert,) = alerts(server)
        assert alert["AuditMessage"]["EventIdentification"]["EventTypeCode"][0]["originalText"] == "Node Authentication"
    finally:
        server.stop()
