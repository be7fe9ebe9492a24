"""Several ``slidearchive serve`` processes that are one archive: the harness of the multi-node tests.

Each node is a real server (conftest.Server) with its own data directory (spool, temp files,
run state) and its own ports, all given the same configuration text: the shared catalog,
storage and search index live in it (``[catalog] url``, ``[storage] url``, ``[index]``), so
what one node stores the others see. ``kill`` is SIGKILL of the node's whole process group:
a machine that disappears, not a graceful stop.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

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
