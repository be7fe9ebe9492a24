"""A series document merged event by event (indexer/parts.py, the worker's kept parts) equals
the document built from scratch over the catalog's headers, on both backends."""
from __future__ import annotations

from itertools import zip_longest

from archive.auth.access import SYSTEM

from es_node import es_node, make_index, store_series  # noqa: F401  (fixtures)
from indexer.documents import build_document
from indexer.embedded import EmbeddedIndex
from indexer.state import IndexState
from indexer.synthetic import annotation_headers, slide_headers
from indexer.worker import IndexWorker


def _one_series(slides: list[list]) -> list:
    """The instances of several synthetic slides (differing stains, specimens, scanners) as one series."""
    first = slides[0][0]
    out = []
    for headers in slides:
        for ds in headers:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
            ds.PatientID = first.PatientID
            out.append(ds)
    return out


def _scratch(catalog, tmp_path, uid: str) -> dict:
    """The document a new worker (nothing kept) writes into a new embedded index."""
    index = EmbeddedIndex(tmp_path / f"scratch-{uid[-6:]}.sqlite")
    state = IndexState(tmp_path / f"scratch-{uid[-6:]}-state.sqlite")
    try:
        IndexWorker(catalog, index, state).catch_up()
        return index.get(uid)
    finally:
        index.close()
        state.close()


def test_series_merged_instance_by_instance_equals_the_one_built_from_scratch(make_index, tmp_path):
    from archive.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog.sqlite")
    index = make_index()
    state = IndexState(tmp_path / "state.sqlite")
    worker = IndexWorker(catalog, index, state, batch_size=2)
    series = _one_series([slide_headers(n, seed=7) for n in range(4)])
    uid = series[0].SeriesInstanceUID
    stains = {c.CodeValue for ds in series for spec in ds.SpecimenDescriptionSequence
              for step in spec.SpecimenPreparationSequence
              for item in step.SpecimenPreparationStepContentItemSequence
              for c in item.get("ConceptCodeSequence", [])}
    assert len(stains) > 3  # the slides really differ
    try:
        for ds in series:  # one event per step: every step merges only the new instance
            store_series(catalog, [ds])
            worker.step()
        ann = annotation_headers(series[:1], 1)
        store_series(catalog, ann)
        worker.catch_up()
        index.refresh()
        incremental = index.get(uid)
        assert incremental["instance_count"] == len(series)
        assert incremental["ai"]["present"] is True
        assert incremental == _scratch(catalog, tmp_path, uid)
        assert incremental["specimen"] == build_document(catalog.series_headers(uid))["specimen"]

        # an instance of the second slide goes (its own specimen and stain): merged again from what is left
        gone = series[len(slide_headers(0, seed=7))]
        catalog.delete(gone.StudyInstanceUID, uid, gone.SOPInstanceUID, principal=SYSTEM)
        worker.catch_up()
        index.refresh()
        after = index.get(uid)
        assert after["instance_count"] == len(series) - 1
        assert after == _scratch(catalog, tmp_path, uid)

        # the slide loses its annotation: its AI summary goes, as from scratch
        catalog.delete(ann[0].StudyInstanceUID, ann[0].SeriesInstanceUID, principal=SYSTEM)
        worker.catch_up()
        index.refresh()
        assert index.get(uid)["ai"]["present"] is False
        assert index.get(uid) == _scratch(catalog, tmp_path, uid)
    finally:
        catalog.close()
        state.close()


def test_kept_parts_beyond_the_cache_are_read_again(tmp_path):
    """With room for fewer instances than two series hold, the dropped series is re-read, not lost."""
    from archive.catalog import Catalog

    catalog = Catalog(tmp_path / "catalog.sqlite")
    index = EmbeddedIndex(tmp_path / "index.sqlite")
    state = IndexState(tmp_path / "state.sqlite")
    worker = IndexWorker(catalog, index, state)
    worker.source.cache_instances = 3
    a, b = slide_headers(1), slide_headers(2)
    try:
        for pair in zip_longest(a, b):  # the two series' events interleaved
            store_series(catalog, [ds for ds in pair if ds is not None])
            worker.step()
        for headers in (a, b):
            uid = headers[0].SeriesInstanceUID
            assert index.get(uid)["instance_count"] == len(headers)
            assert index.get(uid) == _scratch(catalog, tmp_path, uid)
    finally:
        index.close()
        catalog.close()
        state.close()

