"""QIDO-RS answered from a real Elasticsearch node (``[index] qido = true``), falling back to the catalog."""
from __future__ import annotations

import time

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from elasticsearch import Elasticsearch
from pydicom import dcmread

from conftest import IDENTIFIED
from es_node import EsNode, require_runner
from slides import SlideSpec, make_slide


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    require_runner()
    n = EsNode(tmp_path_factory.mktemp("es-qido")).start()
    yield n
    n.stop()


def _wait_indexed(server, count: int) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        r = requests.get(f"{server.url}/api/search?size=0")
        if r.status_code == 200 and r.json()["total"] >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"index did not catch up: {r.status_code} {r.text[:200]}")


def test_qido_from_elasticsearch_and_fallback(make_server, node, tmp_path):
    config = IDENTIFIED + f'\n[index]\nbackend = "elasticsearch"\nurls = ["{node.url}"]\nqido = true\n' \
                          f'index_prefix = "qido-"\n'
    server = make_server(config, dimse=False)
    client = DICOMwebClient(url=server.dicomweb)
    specs = [SlideSpec(width=512, height=512, seed=70 + i, patient_name=name, patient_id=f"P{i}",
                       label=False, overview=False)
             for i, name in enumerate(["ALPHA^ANN", "BETA^BOB", "ALPHA^ALICE"])]
    firsts = []
    for i, spec in enumerate(specs):
        datasets = [dcmread(p) for p in make_slide(tmp_path / str(i), spec)]
        client.store_instances(datasets)
        firsts.append(datasets[0])
    _wait_indexed(server, len(specs))

    found = client.search_for_studies(search_filters={"PatientName": "ALPHA*"})
    assert {s["0020000D"]["Value"][0] for s in found} == {firsts[0].StudyInstanceUID, firsts[2].StudyInstanceUID}
    assert found[0]["00201208"]["Value"] == [2]  # rows still come from the catalog
    series = client.search_for_series(search_filters={"PatientID": "P1"})
    assert [s["0020000E"]["Value"][0] for s in series] == [firsts[1].SeriesInstanceUID]

    # The index really answers: remove the documents and the index-backed search misses it...
    es = Elasticsearch(node.url)
    for hit in es.search(index="qido-*", size=100)["hits"]["hits"]:
        es.delete(index=hit["_index"], id=hit["_id"], refresh=True)
    assert client.search_for_studies(search_filters={"PatientName": "ALPHA*"}) == []
    # ...while a query scoped to a study is always the catalog's
    assert len(client.search_for_series(firsts[0].StudyInstanceUID)) == 1
    # and with the node gone, QIDO falls back to the catalog: same answer as before
    node.stop()
    found = client.search_for_studies(search_filters={"PatientName": "ALPHA*"})
    assert {s["0020000D"]["Value"][0] for s in found} == {firsts[0].StudyInstanceUID, firsts[2].StudyInstanceUID}
