"""Study/series QIDO from the index gives exactly the catalog's results, over generated queries."""
from __future__ import annotations

import random

import pytest

from archive.auth.access import SYSTEM

from es_node import es_node, make_index, store_series  # noqa: F401  (fixtures)
from indexer import qido
from indexer.base import Unanswerable
from indexer.state import IndexState
from indexer.synthetic import annotation_headers, slide_headers
from indexer.worker import IndexWorker

STUDY_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
              "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
              "StudyDescription")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
               "BodyPartExamined")
NAMES = ["van der Berg^Anna", "SMITH^JOHN", "Smythe^Jon", "MÜLLER^ANNA", "O'Brien^Pat^Q", "doe^jane",
         "GARCIA^LUIS^^DR", "Nguyen^Mai"]
N_QUERIES = 300


def _series_data() -> list[list]:
    """~40 studies, 1-3 slides each, some with an ANN series; study attributes consistent per study."""
    rnd = random.Random(7)
    out, n = [], 0
    for s in range(40):
        study = None
        for _ in range(rnd.randint(1, 3)):
            headers = slide_headers(n, seed=9, study_uid=f"2.25.9{s + 100}", patient=s % 17)
            n += 1
            if study is None:
                study = headers[0]
                if s % 4 == 0:
                    del study.AccessionNumber
                if s % 5 == 1:
                    study.IssuerOfPatientID = "HOSP"
                if s % 6 == 2:
                    del study.ReferringPhysicianName
                if s % 7 == 3:
                    study.StudyDescription = ""
                # one name per patient: the catalog keeps the first-seen patient row (see README notes)
                study.PatientName = NAMES[(s % 17) % len(NAMES)]
                study.StudyTime = ["101500.123", "0930", "235959", "120000"][s % 4]
                study.StudyDate = f"20{10 + s % 12:02d}{1 + s % 12:02d}{1 + (s * 5) % 28:02d}"
                if s % 9 == 4:
                    del study.StudyTime
            for h in headers:
                for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                           "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyDescription",
                           "IssuerOfPatientID"):
                    if kw in study:
                        setattr(h, kw, study.data_element(kw).value)
                    elif kw in h:
                        delattr(h, kw)
            if n % 5 == 0:
                headers[0].SeriesDescription = ""
            out.append(headers)
            if n % 4 == 0:
                out.append(annotation_headers(headers, n % 3))
    return out


@pytest.fixture(scope="module")
def catalog_and_data(tmp_path_factory):
    from archive.catalog import Catalog

    catalog = Catalog(tmp_path_factory.mktemp("qido") / "catalog.sqlite")
    data = _series_data()
    for headers in data:
        store_series(catalog, headers)
    yield catalog, data
    catalog.close()


def _pool(data, keyword):
    values = set()
    for headers in data:
        v = headers[0].get(keyword)
        if v not in (None, ""):
            values.add(str(v).replace(":", ""))
    return sorted(values)


def _mutate(rnd, value: str) -> str:
    choice = rnd.random()
    if choice < 0.3 and len(value) > 2:
        return value[: rnd.randint(1, len(value) - 1)] + "*"
    if choice < 0.5 and len(value) > 2:
        return "*" + value[rnd.randint(1, len(value) - 1):]
    if choice < 0.75:
        chars = list(value)
        for _ in range(rnd.randint(1, 2)):
            chars[rnd.randrange(len(chars))] = "?"
        return "".join(chars)
    return value[:1] + "*" + value[-1:] if len(value) > 1 else "*"


def _value(rnd, data, keyword: str) -> str:
    from archive.catalog.attributes import KEYS

    key = KEYS[keyword]
    pool = _pool(data, keyword if keyword != "ModalitiesInStudy" else "Modality") or ["X"]
    r = rnd.random()
    if keyword in ("AccessionNumber", "StudyDescription", "ReferringPhysicianName", "IssuerOfPatientID",
                   "SeriesDescription", "StudyTime") and r < 0.1:
        return '""'
    if key.vr == "UI":
        picks = rnd.sample(pool, min(len(pool), rnd.randint(1, 4)))
        return rnd.choice(["\\", ","]).join(picks)
    if key.vr in ("DA", "TM"):
        if r < 0.5:
            lo, hi = sorted(rnd.sample(pool, 2)) if len(pool) > 1 else (pool[0], pool[0])
            if key.vr == "TM" and rnd.random() < 0.5:
                lo, hi = lo[:2], hi[:2]
            form = rnd.random()
            return f"{lo}-{hi}" if form < 0.6 else (f"{lo}-" if form < 0.8 else f"-{hi}")
        return rnd.choice(pool)
    if key.vr == "IS":
        return rnd.choice(pool + ["999"])
    if key.vr == "PN":
        name = rnd.choice(pool)
        part = rnd.choice([p for p in name.split("^") if p] or [name])
        part = part[: rnd.randint(1, len(part))]
        part = part.upper() if rnd.random() < 0.5 else part.lower()
        if r < 0.3:
            return part + "*"
        if r < 0.5:
            return name.lower() if rnd.random() < 0.5 else name
        return part
    if r < 0.4:
        return _mutate(rnd, rnd.choice(pool))
    if r < 0.5 and key.vr == "CS":
        return "\\".join(rnd.sample(pool, min(2, len(pool))))
    return rnd.choice(pool + ["nothing-like-this"])


def _queries(data, level: str, count: int, seed: int):
    from archive.catalog.query import parse_qido
    from archive.errors import InvalidRequest

    rnd = random.Random(seed)
    keys = STUDY_KEYS + (("ModalitiesInStudy",) if level == "study" else SERIES_KEYS)
    made = 0
    while made < count:
        params = [(k, _value(rnd, data, k)) for k in rnd.sample(keys, rnd.choice([1, 1, 2, 2, 3]))]
        if rnd.random() < 0.3:
            params.append(("fuzzymatching", "true"))
        if rnd.random() < 0.3:
            params += [("limit", str(rnd.randint(1, 10))), ("offset", str(rnd.randint(0, 5)))]
        try:
            query = parse_qido(level, params)
        except InvalidRequest:
            continue
        made += 1
        yield params, query


def _uid(level, row):
    return row["0020000D" if level == "study" else "0020000E"]["Value"][0]


@pytest.mark.parametrize("level", ["study", "series"])
def test_generated_queries_match_the_catalog(level, catalog_and_data, make_index, tmp_path):
    catalog, data = catalog_and_data
    index = make_index()
    IndexWorker(catalog, index, IndexState(tmp_path / "state.sqlite")).catch_up()
    index.refresh()
    nonempty = 0
    for params, query in _queries(data, level, N_QUERIES // 2, seed=11 if level == "study" else 12):
        expected_rows = catalog.search(query, principal=SYSTEM)
        unpaged = qido.replace_matches(query, query.matches)
        unpaged.limit, unpaged.offset = None, 0
        expected = sorted({_uid(level, r) for r in catalog.search(unpaged, principal=SYSTEM)})
        got = index.qido_uids(level, query.matches, query.fuzzy, 10_000)
        assert got == expected, params
        assert qido.answer(index, catalog, query, SYSTEM) == expected_rows, params
        nonempty += bool(expected)
    assert nonempty > N_QUERIES // 6  # the generator really exercises matching, not just misses


def test_answer_refuses_instance_level(catalog_and_data, make_index, tmp_path):
    from archive.catalog.query import parse_qido

    catalog, _ = catalog_and_data
    index = make_index()
    with pytest.raises(Unanswerable):
        qido.answer(index, catalog, parse_qido("instance", [("SOPClassUID", "1.2.3")]), SYSTEM)


@pytest.mark.elasticsearch
def test_an_index_of_an_older_mapping_keeps_answering_and_taking_writes(catalog_and_data, es_node, monkeypatch,
                                                                       tmp_path):  # noqa: F811
    """An index built before name starts existed (mapping version 3) is upgraded in place: new
    documents are accepted, and fuzzy names are still matched like the catalog (by wildcard) for
    documents that carry no starts."""
    from es_node import elastic_index
    from indexer import elastic

    catalog, data = catalog_and_data
    index = elastic_index(es_node.url)
    old = elastic.mapping()
    del old["properties"]["name_starts"]
    old["_meta"]["mapping_version"] = 3
    try:
        index.es.indices.create(index=f"{index.alias}-v3-0", mappings=old, aliases={index.alias: {}})
        with monkeypatch.context() as m:  # the documents an older version wrote
            m.setattr(qido, "with_name_starts", lambda doc: doc)
            IndexWorker(catalog, index, IndexState(tmp_path / "state.sqlite")).catch_up()
        index.ensure()
        assert index.mapping_version() == 3
        series_uid = data[0][0].SeriesInstanceUID
        doc = index.get(series_uid)
        assert "name_starts" not in doc and index.upsert([doc]) == []  # refused as an unknown field before
        index.refresh()
        fuzzy_names = 0
        for params, query in _queries(data, "study", 200, seed=13):
            if not (query.fuzzy and any(m.key.vr == "PN" for m in query.matches)):
                continue
            fuzzy_names += 1
            unpaged = qido.replace_matches(query, query.matches)
            unpaged.limit, unpaged.offset = None, 0
            expected = sorted({_uid("study", r) for r in catalog.search(unpaged, principal=SYSTEM)})
            assert index.qido_uids("study", query.matches, query.fuzzy, 10_000) == expected, params
        assert fuzzy_names > 10
    finally:
        index.es.indices.delete(index=f"{index.alias}*", ignore_unavailable=True)
        index.close()


def test_name_starts_are_what_a_fuzzy_match_needs():
    assert qido.name_starts("van der Berg^Anna") == ["van der berg^anna", "der berg^anna", "berg^anna", "anna"]
    assert qido.name_starts("MÜLLER^ANNA^") == ["mÜller^anna^", "anna^"]  # ASCII case folding, as SQL lower()
    doc = {"series_uid": "1", "qido": {"PatientName": "Doe^Jane", "PatientID": "P"}}
    assert qido.with_name_starts(doc)["name_starts"] == {"PatientName": ["doe^jane", "jane"]}
    assert qido.with_name_starts({"series_uid": "1", "qido": {"PatientID": "P"}}) == {"series_uid": "1",
                                                                                     "qido": {"PatientID": "P"}}


def test_name_keys_are_the_person_name_keys_the_index_holds():
    from archive.catalog.attributes import KEYS
    from indexer.documents import QIDO_KEYS

    assert set(qido.NAME_KEYS) == {k for k, _ in QIDO_KEYS if KEYS[k].vr == "PN"}
