"""The WSGI entry point the HTTP server's worker processes import.

``slidearchive serve`` passes its Settings through the environment
(``archive.server.SETTINGS_ENV``), so every worker builds the same app without
re-reading configuration files, and its own pid (``archive.lifecycle.SUPERVISOR_ENV``),
so every worker dies with it and reports to it.
"""
from __future__ import annotations

import base64
import os
import pickle

from flask import Flask


def app_from_environment() -> Flask:
    from archive.lifecycle import SUPERVISOR_ENV
    from archive.logs import AccessLog, configure, quiet_libraries
    from archive.server import SETTINGS_ENV

    from . import create_app, drain, profiling

    settings = pickle.loads(base64.b64decode(os.environ[SETTINGS_ENV]))
    if os.environ.get(SUPERVISOR_ENV):
        drain.install(settings.stop_timeout, int(os.environ[SUPERVISOR_ENV]))
    configure(settings.logging, settings.data_dir, access=True)
    quiet_libraries()
    app = create_app(settings)
    app.extensions["archive"].ingest.warm_up()
    app.wsgi_app = AccessLog(app.wsgi_app)  # every request, the frame fast path included
    app.wsgi_app = profiling.wrap(app.wsgi_app, app.extensions["archive"])  # outermost; benchmarks only
    return app
