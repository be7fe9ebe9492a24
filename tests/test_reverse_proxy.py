"""Behind a reverse proxy: X-Forwarded-* count only from [server] trusted_proxies; a real nginx in front."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from archive.audit.log import read_records
from conftest import IDENTIFIED, _wait_port, free_port
from slides import SlideSpec, make_slide

NGINX = Path("/usr/sbin/nginx")
#: The location block docs/security.md shows, with the test's ports.
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /pacs/ {{
            proxy_pass http://127.0.0.1:{archive}/;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host:$server_port;
            proxy_set_header X-Forwarded-Prefix /pacs;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_request_buffering off;
            proxy_buffering off;
            client_max_body_size 0;
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    paths = make_slide(tmp_path_factory.mktemp("slide"), SlideSpec(width=256, height=256, seed=71, codec="native",
                                                                   label=False, overview=False))
    return dcmread(paths[0])


def metadata_url(base: str, ds) -> str:
    return f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/metadata"


def last_query(server) -> dict:
    deadline = time.time() + 10
    while time.time() < deadline:
        queries = [r for r in read_records(server.data_dir / "audit") if r["event"] == "Query"]
        if queries:
            return queries[-1]
        time.sleep(0.1)
    raise AssertionError("no Query audited")


SPOOFED = {"X-Forwarded-Host": "evil.example.org", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


@pytest.mark.parametrize("trusted, believed", [('["127.0.0.1"]', True), ('["10.99.0.0/16"]', False)])
def test_forwarded_headers_count_only_from_trusted_proxies(make_server, instance, trusted, believed):
    server = make_server(IDENTIFIED + f"[server]\ntrusted_proxies = {trusted}\n", dimse=False)
    DICOMwebClient(url=server.dicomweb).store_instances([instance])
    uri = requests.get(metadata_url(server.dicomweb, instance), headers=SPOOFED).json()[0]["7FE00010"]["BulkDataURI"]
    requests.get(f"{server.dicomweb}/studies", headers=SPOOFED).raise_for_status()
    remote = last_query(server)["remote"]
    if believed:
        assert uri.startswith("https://evil.example.org/dicomweb/") and remote == "203.0.113.9"
    else:
        assert uri.startswith(f"http://127.0.0.1:{server.http_port}/dicomweb/") and remote == "127.0.0.1"


@pytest.mark.slow
def test_behind_nginx_with_a_path_prefix(make_server, instance, tmp_path):
    assert NGINX.exists(), "nginx not installed (scripts/test.sh installs it)"
    server = make_server(IDENTIFIED, dimse=False)
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=tmp_path, port=port, archive=server.http_port))
    nginx = subprocess.Popen([str(NGINX), "-c", str(conf), "-p", str(tmp_path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT)
    try:
        assert _wait_port(port, time.time() + 20), (tmp_path / "error.log").read_text()
        base = f"http://127.0.0.1:{port}/pacs/dicomweb"
        DICOMwebClient(url=base).store_instances([instance])
        meta = DICOMwebClient(url=base).retrieve_instance_metadata(
            instance.StudyInstanceUID, instance.SeriesInstanceUID, instance.SOPInstanceUID)
        uri = meta["7FE00010"]["BulkDataURI"]
        assert uri.startswith(f"http://127.0.0.1:{port}/pacs/dicomweb/studies/")
        assert requests.get(uri, headers={"Accept": "application/octet-stream"}).content == instance.PixelData
        requests.get(f"{base}/studies", headers={"X-Forwarded-For": "203.0.113.9"}).raise_for_status()
        assert last_query(server)["remote"] == "127.0.0.1"  # nginx replaced what the client claimed
    finally:
        nginx.terminate()
        nginx.wait(10)
