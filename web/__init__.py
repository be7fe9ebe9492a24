"""The web app: pages served by the archive's own HTTP server, over its own APIs.

``register`` (called by ``dicomweb.create_app``) adds the static files (``web/static``
and the pinned browser libraries from ``node_modules``, installed by ``npm ci``) and
the page blueprints. Nothing a page needs is loaded from another origin.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, abort, render_template, send_from_directory

from archive.auth.access import requires

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


@static.get("/login/callback")
@requires("public")
def login_callback():
    """Where the issuer sends the browser back with a code; web/static/auth.js trades it for a token."""
    return render_template("login_callback.html")


def register(app: Flask) -> None:
    from . import datasets, search, slides

    app.register_blueprint(static)
    search.register(app)
    slides.register(app)
    datasets.register(app)
    settings = app.config["SETTINGS"]
    web_config = {"login": settings.web.login(settings.auth)}

    @app.context_processor
    def page_config() -> dict:
        """Every page embeds how to log in (web/templates/base.html #web-config)."""
        return {"web_config": web_config}
