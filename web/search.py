"""The browse and search page at ``/``.

A server-rendered shell (public, like every page: the browser may hold the only credentials)
whose form shows the query of the URL, so a search can be shared by its address. The page's
script asks ``/api/search`` with the user's token and draws the facets, hits and pages; the
search index does the work, so the page stays quick however many slides are indexed.
"""
from __future__ import annotations

from flask import Blueprint, Flask, render_template, request

from archive.auth.access import requires

from .codes import MEANINGS

pages = Blueprint("search_pages", __name__, template_folder="templates")

#: The facets the page offers: (search API field, heading).
FACETS = (
    ("collection", "Collection"),
    ("specimen.anatomy_codes", "Organ / anatomic structure"),
    ("specimen.stain_codes", "Stain"),
    ("specimen.type_codes", "Specimen type"),
    ("patient.species_codes", "Species"),
    ("specimen.container_type_codes", "Specimen container"),
    ("specimen.processing_types", "Processing"),
    ("scanner.manufacturer", "Scanner"),
    ("scanner.model", "Scanner model"),
    ("ai.present", "Has AI results"),
)
#: Sort orders offered: (value of the API's sort parameter, label); "" is relevance.
SORTS = (
    ("", "Relevance"),
    ("-study.date", "Study date, newest first"),
    ("study.date", "Study date, oldest first"),
    ("collection", "Collection"),
    ("scanner.manufacturer", "Scanner"),
    ("-magnification", "Magnification, highest first"),
    ("-pyramid.width", "Image width, largest first"),
    ("-ai.annotation_count", "AI annotations, most first"),
)
SIZES = (20, 50, 100)


def register(app: Flask) -> None:
    app.register_blueprint(pages)


@pages.get("/")
@requires("public")
def search_page():
    size = request.args.get("size", "")
    return render_template("search.html", q=request.args.get("q", ""), sort=request.args.get("sort", ""),
                           size=int(size) if size.isdigit() and int(size) in SIZES else SIZES[0],
                           facets=FACETS, sorts=SORTS, sizes=SIZES, meanings=MEANINGS)
