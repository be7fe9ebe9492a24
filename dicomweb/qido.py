"""QIDO-RS: every search resource of PS3.18 10.6, answered from the catalog."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from archive.auth.access import requires
from archive.catalog.attributes import tag_hex
from archive.catalog.query import parse_qido
from archive.dicomjson import dumps
from archive.errors import NotAcceptable
from archive.uids import check_uid

from . import archive, audit, media, principal, resource_url, settings

bp = Blueprint("qido", __name__)


def _search(level: str, study: str | None = None, series: str | None = None) -> Response:
    if study:
        check_uid(study, "StudyInstanceUID")
    if series:
        check_uid(series, "SeriesInstanceUID")
    accept = media.parse_accept(request.headers.get("Accept"))
    if not media.accepts(accept, "application/dicom+json", "application/json"):
        raise NotAcceptable("QIDO-RS responses are application/dicom+json")
    # request.args is already percent-decoded; keep repeated keys in order
    query = parse_qido(level, request.args.items(multi=True))
    rows = _rows(query, study, series)
    keep = query.returned()
    tags = None if keep is None else {tag_hex(k) for k in keep if k not in ("RetrieveURL",)}
    out = []
    for row in rows:
        s = row.get("0020000D", {}).get("Value", [None])[0]
        se = row.get("0020000E", {}).get("Value", [None])[0] if level != "study" else None
        sop = row.get("00080018", {}).get("Value", [None])[0] if level == "instance" else None
        if tags is not None:
            row = {t: v for t, v in row.items() if t in tags}
        row["00081190"] = {"vr": "UR", "Value": [resource_url(s, se, sop)]}
        out.append(dict(sorted(row.items())))
    audit("Query", study=study, series=series, query=request.args.to_dict(flat=False),
          detail={"description": f"QIDO-RS {level} level, {len(out)} matches"})
    return Response(dumps(out), content_type="application/dicom+json")


def _rows(query, study: str | None, series: str | None) -> list[dict]:
    """From the search index when ``[index] qido = true`` and it can answer, else from the catalog.

    The catalog stays the source of truth: the index only picks the matching UIDs,
    and any failure of the index falls back to the catalog's own matching.
    """
    catalog = archive().catalog
    index = _qido_index()
    if index is not None and study is None and series is None:
        from indexer.base import IndexUnavailable, Unanswerable
        from indexer.qido import answer

        try:
            return answer(index, catalog, query, principal())
        except (Unanswerable, IndexUnavailable):
            pass
    return catalog.search(query, study, series, principal=principal())


def _qido_index():
    app = current_app
    if "qido_index" not in app.extensions:
        from indexer.config import load_index_config
        from indexer.factory import open_index

        config = load_index_config(settings().index, settings().data_dir)
        app.extensions["qido_index"] = open_index(config) if config.qido else None
    return app.extensions["qido_index"]


@bp.get("/studies")
@requires("read")
def studies():
    return _search("study")


@bp.get("/series")
@requires("read")
def all_series():
    return _search("series")


@bp.get("/studies/<study>/series")
@requires("read")
def study_series(study: str):
    return _search("series", study)


@bp.get("/instances")
@requires("read")
def all_instances():
    return _search("instance")


@bp.get("/studies/<study>/instances")
@requires("read")
def study_instances(study: str):
    return _search("instance", study)


@bp.get("/studies/<study>/series/<series>/instances")
@requires("read")
def series_instances(study: str, series: str):
    return _search("instance", study, series)
