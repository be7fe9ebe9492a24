"""The web app's dataset pages (landing pages of released datasets): ``/datasets`` and ``/datasets/<id>/v<version>``.

What a person following a citation or a DOI lands on: the title, version,
identifier, citation, description, licence, creators, counts and every version,
with the schema.org JSON-LD embedded (``<script type="application/ld+json">``) so
dataset search engines that crawl the page find the same metadata as the API.
Public, like the metadata API; only released datasets have pages.
"""
from __future__ import annotations

import json

from flask import Blueprint, Flask, redirect, render_template, request
from markupsafe import Markup

from archive.auth.access import requires
from archive.errors import InvalidRequest

from datasets import metadata, model, release
from datasets.api import _archive, _base, _publisher, dataset_json

bp = Blueprint("dataset_pages", __name__, template_folder="templates")


def register(app: Flask) -> None:
    app.register_blueprint(bp)


def _embedded(doc: dict) -> Markup:
    """JSON for a <script> element: no "</script>" can end it early, whatever a curator typed."""
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


@bp.get("/datasets")
@requires("public")
def catalogue():
    text = request.args.get("q") or None
    if text and len(text) > 200:
        raise InvalidRequest("q is longer than 200 characters")
    total, latest = release.latest_releases(_archive().catalog, text, limit=500)
    return render_template("datasets/catalogue.html", releases=latest, total=total, query=text or "",
                           publisher=_publisher())


@bp.get("/datasets/<dataset_id>")
@requires("public")
def newest(dataset_id: str):
    made = release.releases(_archive().catalog, model.check_id(dataset_id))
    if not made:
        from archive.errors import NotFound

        raise NotFound(f"no released dataset {dataset_id!r}")
    return redirect(f"/datasets/{dataset_id}/v{made[-1].version}", 302)


@bp.get("/datasets/<dataset_id>/v<int:version>")
@requires("public")
def landing(dataset_id: str, version: int):
    catalog, base, publisher = _archive().catalog, _base(), _publisher()
    r = release.get_release(catalog, release.release_id(model.check_id(dataset_id), version))
    previous = release.get_release(catalog, release.release_id(dataset_id, version - 1)) if version > 1 else None
    dataset = dataset_json(catalog, dataset_id, None, base, publisher)
    return render_template("datasets/landing.html", release=r, dataset=dataset, meta=r.metadata, counts=r.counts,
                           citation=metadata.citation(r, publisher), urls=metadata.urls(base, r),
                           identifier=metadata.resolvable(r.identifier), publisher=publisher,
                           license_url=metadata.license_url(r.metadata["license"]),
                           jsonld=_embedded(metadata.json_ld(r, base, publisher, previous)))
