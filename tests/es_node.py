"""A real Elasticsearch 8 node for the index tests, and the backend fixtures built on it.

The node comes from indexer/es-runner (jars from Maven Central, started by
start.sh on 127.0.0.1). It needs `mvn -q -f indexer/es-runner/pom.xml
dependency:copy-dependencies` once; without it the Elasticsearch half of the
tests is skipped locally and fails under CI (CI=true), so a missing install
step cannot pass silently.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "indexer" / "es-runner"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EsNode:
    """One node process (start.sh); ``stop()``/``start()`` again keep its data directory."""

    def __init__(self, home: Path, port: int | None = None, heap: str = "1g", parent: int | None = None):
        self.home, self.heap = home, heap
        self.port = port or _free_port()
        self.parent = parent or os.getpid()  # the node exits when this process is gone
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "EsNode":
        env = dict(os.environ, ES_HEAP=self.heap, ES_PARENT_PID=str(self.parent))
        out = subprocess.run(["bash", str(RUNNER / "start.sh"), str(self.home), str(self.port)],
                             capture_output=True, text=True, env=env, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"Elasticsearch did not start: {out.stderr[-3000:]}")
        self.pid = int((self.home / "node.pid").read_text())
        self._warm_up()
        return self

    def _warm_up(self) -> None:
        """Create and drop one index: a fresh node's first index creation (class loading, the first
        mappings) can take longer than a client's 10 s timeout on a loaded machine, and that cost
        belongs to the node's start, not to whichever test comes first."""
        for method in ("PUT", "DELETE"):
            request = urllib.request.Request(f"{self.url}/warm-up?timeout=120s&master_timeout=120s", method=method)
            urllib.request.urlopen(request, timeout=150).close()

    def stop(self, timeout: float = 30) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            self.pid = None
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None


def runner_missing() -> str | None:
    if shutil.which("java") is None:
        return "java is not installed"
    if not (RUNNER / "target" / "dependency").is_dir():
        return "run `mvn -q -f indexer/es-runner/pom.xml dependency:copy-dependencies` first"
    return None


def require_runner() -> None:
    reason = runner_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"Elasticsearch runner unavailable under CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def es_node(tmp_path_factory) -> Iterator[EsNode]:
    """One node for the whole run. Under pytest-xdist the first worker that needs it starts it in
    the run's shared temporary directory, tied to the controller's life (the workers' parent),
    and the others use it: one JVM of a gigabyte instead of one per worker; every test makes
    indices of its own prefix."""
    require_runner()
    if "PYTEST_XDIST_WORKER" not in os.environ:
        node = EsNode(tmp_path_factory.mktemp("es-node")).start()
        yield node
        node.stop()
        return
    root = tmp_path_factory.getbasetemp().parent
    with open(root / "es-node.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = root / "es-node.json"
        if started.exists():
            node = EsNode(root / "es-node", port=json.loads(started.read_text())["port"])
        else:
            node = EsNode(root / "es-node", parent=os.getppid()).start()
            started.write_text(json.dumps({"port": node.port}))
    yield node  # stops with the controller, after every worker is done


def elastic_index(url: str, **overrides):
    from indexer.config import IndexConfig
    from indexer.elastic import ElasticIndex

    config = IndexConfig(backend="elasticsearch", urls=(url,), index_prefix=f"t{uuid.uuid4().hex[:12]}-",
                         **overrides)
    return ElasticIndex(config)


BACKENDS = [pytest.param("embedded", id="embedded"),
            pytest.param("elasticsearch", id="elasticsearch", marks=pytest.mark.elasticsearch)]


@pytest.fixture(params=BACKENDS)
def make_index(request, tmp_path) -> Iterator[Callable]:
    """Factory of fresh, empty indexes of the parametrized backend."""
    made = []

    def factory():
        if request.param == "embedded":
            from indexer.embedded import EmbeddedIndex

            index = EmbeddedIndex(tmp_path / f"index-{len(made)}.sqlite")
        else:
            node = request.getfixturevalue("es_node")
            index = elastic_index(node.url)
        index.ensure()
        made.append(index)
        return index

    yield factory
    for index in made:
        if hasattr(index, "es"):
            try:
                index.es.indices.delete(index=f"{index.alias}*", ignore_unavailable=True)
            except Exception:
                pass
        index.close()


def store_series(catalog, headers, collection: str = "c") -> None:
    """Put synthetic headers into a real archive Catalog the way ingest does (no files needed)."""
    from archive import dicomjson
    from archive.catalog import NewInstance

    for ds in headers:
        catalog.add_instance(NewInstance(ds, "1.2.840.10008.1.2.1", f"sid-{ds.SOPInstanceUID}", 1, "0" * 64,
                                         None, None, dicomjson.to_json(ds)), collection)
