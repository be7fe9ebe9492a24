"""The web app: pages served by the archive's own HTTP server, over its own APIs.

``register`` (called by ``dicomweb.create_app``) adds the static files (``web/static``
and the pinned browser libraries from ``node_modules``, installed by ``npm ci``) and
the page blueprints. Nothing a page needs is loaded from another origin.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, abort, send_from_directory

from archive.access import requires

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parent / "node_modules"
#: Browser libraries served under /static/vendor/<name>/: the directory of each that holds its builds.
VENDOR = {
    "dicom-microscopy-viewer": NODE_MODULES / "dicom-microscopy-viewer" / "dist",
    "dicomweb-client": NODE_MODULES / "dicomweb-client" / "build",
}
static = Blueprint("web_static", __name__)


@static.get("/static/vendor/<name>/<path:path>")
@requires("public")
def vendor(name: str, path: str):
    root = VENDOR.get(name)
    if root is None or not root.is_dir():
        abort(404)
    return send_from_directory(root, path, max_age=3600)


@static.get("/static/<path:path>")
@requires("public")
def own(path: str):
    return send_from_directory(HERE / "static", path, max_age=60)


def register(app: Flask) -> None:
    from . import datasets, slides

    app.register_blueprint(static)
    slides.register(app)
    datasets.register(app)
