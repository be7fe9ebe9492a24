"""A real Elasticsearch 8 node for the index tests, and the backend fixtures built on it.

The node comes from indexer/es-runner (jars from Maven Central, started by
start.sh on 127.0.0.1). It needs `mvn -q -f indexer/es-runner/pom.xml
dependency:copy-dependencies` once; without it the Elasticsearch half of the
tests is skipped locally and fails under CI (CI=true), so a missing install
step cannot pass silently.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
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

    def __init__(self, home: Path, port: int | None = None, heap: str = "1g"):
        self.home, self.heap = home, heap
        self.port = port or _free_port()
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "EsNode":
        env = dict(os.environ, ES_HEAP=self.heap, ES_PARENT_PID=str(os.getpid()))
        out = subprocess.run(["bash", str(RUNNER / "start.sh"), str(self.home), str(self.port)],
                             capture_output=True, text=True, env=env, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"Elasticsearch did not start: {out.stderr[-3000:]}")
        self.pid = int((self.home / "node.pid").read_text())
        return self

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
    """One node for the whole session."""
    require_runner()
    node = EsNode(tmp_path_factory.mktemp("es-node")).start()
    yield node
    node.stop()


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
