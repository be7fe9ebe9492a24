"""Helpers for the results tests (no tests here): storing, posting and reading back over real sockets."""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from slides import SlideSpec, make_slide


def client(server) -> DICOMwebClient:
    return DICOMwebClient(url=server.dicomweb)


def stow(server, paths) -> tuple[int, dict]:
    """STOW-RS the files one request; (HTTP status, response JSON)."""
    boundary = "resultsboundary"
    body = b""
    for p in paths:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + Path(p).read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{server.dicomweb}/studies", data=body, method="POST", headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    return _send(req)


def _send(req) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            data = r.read()
            return r.status, json.loads(data) if data else {}
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, json.loads(data) if data else {}


def api(server, method: str, path: str, body=None, content_type: str = "application/json") -> tuple[int, dict]:
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{server.url}/api{path}", data=data, method=method,
                                 headers={"Content-Type": content_type} if data is not None else {})
    return _send(req)


def post_mask(server, series: str, mask: np.ndarray, metadata: dict) -> tuple[int, dict]:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG")
    boundary = "maskboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{json.dumps(metadata)}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"mask\"; filename=\"mask.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    return api(server, "POST", f"/slides/{series}/segmentations", body,
               f"multipart/form-data; boundary={boundary}")


def store_slide(server, out_dir: Path, spec: SlideSpec) -> tuple[str, str]:
    """Make and STOW a synthetic slide; (study, series) as stored."""
    paths = make_slide(out_dir, spec)
    status, body = stow(server, paths)
    assert status == 200, body
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def result_count(server, series: str) -> int:
    status, body = api(server, "GET", f"/slides/{series}/results")
    assert status == 200, body
    return len(body["results"])


def feature(geometry_type: str, coords, name: str | None = None, measurements: dict | None = None) -> dict:
    props: dict = {}
    if name:
        props["classification"] = {"name": name}
    if measurements:
        props["measurements"] = measurements
    return {"type": "Feature", "geometry": {"type": geometry_type, "coordinates": coords}, "properties": props}
