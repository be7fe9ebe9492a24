"""The WSGI entry point the HTTP server's worker processes import.

``slidearchive serve`` passes its Settings through the environment
(``archive.server.SETTINGS_ENV``), so every worker builds the same app without
re-reading configuration files.
"""
from __future__ import annotations

import base64
import os
import pickle

from flask import Flask


def app_from_environment() -> Flask:
    from archive.server import SETTINGS_ENV, quiet_libraries

    from . import create_app

    quiet_libraries()
    return create_app(pickle.loads(base64.b64decode(os.environ[SETTINGS_ENV])))
