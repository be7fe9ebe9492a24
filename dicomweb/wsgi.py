"""The WSGI entry point the HTTP server's worker processes import.

``slidearchive serve`` passes its Settings through the environment, so every
worker builds the same app without re-reading configuration files.
"""
from __future__ import annotations

import base64
import os
import pickle

from flask import Flask

from archive.config import Settings

ENV = "SLIDEARCHIVE_SETTINGS"


def export_settings(settings: Settings) -> None:
    os.environ[ENV] = base64.b64encode(pickle.dumps(settings)).decode()


def app_from_environment() -> Flask:
    from archive.server import quiet_libraries

    from . import create_app

    quiet_libraries()
    return create_app(pickle.loads(base64.b64decode(os.environ[ENV])))
