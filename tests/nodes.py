"""Several ``slidearchive serve`` processes that are one archive: the harness of the multi-node tests.

Each node is a real server (conftest.Server) with its own data directory (spool, temp files,
run state) and its own ports, all given the same configuration text: the shared catalog,
storage and search index live in it (``[catalog] url``, ``[storage] url``, ``[index]``), so
what one node stores the others see. ``kill`` is SIGKILL of the node's whole process group:
a machine that disappears, not a graceful stop.
"""
from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path
from typing import Sequence

from conftest import Server


class Cluster:
    def __init__(self, root: Path, shared_config: str, count: int = 2, dimse: bool = True,
                 node_config: str = "", env: dict[str, str] | None = None):
        """``env``: variables every node gets (the S3 endpoint and credentials)."""
        self.root = Path(root)
        self.shared_config = shared_config
        self.env = dict(env or {})
        self.nodes = [Server(self.root / f"node{i + 1}", shared_config + node_config, dimse) for i in range(count)]
        for node in self.nodes:
            node.env.update(self.env)

    def start(self) -> "Cluster":
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __iter__(self):
        return iter(self.nodes)

    def __getitem__(self, i: int) -> Server:
        return self.nodes[i]

    def kill(self, node: Server) -> None:
        """SIGKILL the node's supervisor and every child at once (its process group)."""
        node.stop(signal.SIGKILL)

    @staticmethod
    def background_pid(node: Server) -> int | None:
        try:
            return int(json.loads((node.data_dir / "run" / "background.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None


def wait_for(check, timeout: float = 60, interval: float = 0.25, what: str = "the condition"):
    """Poll ``check()`` until it returns something truthy; that value, or AssertionError naming ``what``."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class PiecewiseStow:
    """A STOW-RS request sent piece by piece on its own connection, so that a test can kill the node
    at a known point of the body (after some parts, inside another). ``Content-Length`` is the whole
    body's: the node waits for the rest."""

    BOUNDARY = "nodesboundary"

    def __init__(self, node: Server, paths: Sequence[Path]):
        self.parts = [f"--{self.BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes()
                      + b"\r\n" for p in paths]
        self.closing = f"--{self.BOUNDARY}--\r\n".encode()
        self.conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=60)
        self.conn.putrequest("POST", "/dicomweb/studies")
        self.conn.putheader("Content-Type", f'multipart/related; type="application/dicom"; boundary={self.BOUNDARY}')
        self.conn.putheader("Accept", "application/dicom+json")
        self.conn.putheader("Content-Length", str(sum(map(len, self.parts)) + len(self.closing)))
        self.conn.endheaders()

    def send_parts(self, count: int) -> None:
        """The first ``count`` parts, whole (the next part's delimiter tells the node the last one ended)."""
        for part in self.parts[:count]:
            self.conn.send(part)

    def send_partial(self, index: int, size: int) -> None:
        """The first ``size`` bytes of part ``index`` (its delimiter and headers first)."""
        part = self.parts[index]
        assert size < len(part), "the part is not longer than what is to be sent of it"
        self.conn.send(part[:size])

    def response(self) -> http.client.HTTPResponse:
        return self.conn.getresponse()

    def close(self) -> None:
        self.conn.close()
