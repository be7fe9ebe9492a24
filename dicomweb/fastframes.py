"""The hot path: single-frame WADO-RS requests answered before Flask's routing.

A viewer panning a slide asks for thousands of single frames; Flask's request
machinery costs more than the frame itself (one indexed SQL lookup and one
pread). This WSGI middleware answers exactly the common case (GET of one frame,
sent as stored) and hands everything else, errors included, to the Flask app,
so behaviour and error messages stay the same; storage that did not answer is
handed over as the error it raised, so the frame is not read (and waited for)
twice. It authenticates from the same credential cache as the app; a request it
cannot authenticate, or for an instance the principal may not read, goes to
Flask, which answers 401 or 404. The instance's catalog row comes from memory
while the SQLite catalog is unchanged (archive/catalog/rowcache.py).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

from archive.auth.access import Principal
from archive.auth.authn import Authenticator, Unauthenticated
from archive.catalog.rowcache import InstanceCache
from archive.errors import ArchiveError, StorageUnavailable
from archive.logs import ROUTE_ENVIRON
from archive.service import Archive

from . import FRAME_ERROR_ENVIRON, PRINCIPAL_ENVIRON, client_address, media, multipart
from .auth import cors_headers, principal_from

#: The Flask rule of the same resource (dicomweb.wado), so both paths count under one route label.
FRAME_ROUTE = "/dicomweb/studies/<study>/series/<series>/instances/<sop>/frames/<frames>"
_FRAME = re.compile(r"/dicomweb/studies/([0-9.]{1,64})/series/([0-9.]{1,64})/instances/([0-9.]{1,64})/frames/([0-9]{1,9})")


class FastFrames:
    def __init__(self, app: Callable, archive: Archive, authenticator: Authenticator):
        self.app = app
        self.archive = archive
        self.authenticator = authenticator
        self.origins = set(archive.settings.auth.cors_origins)
        self.rows = InstanceCache.for_catalog(archive.catalog)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET" and not environ.get("QUERY_STRING"):
            m = _FRAME.fullmatch(environ.get("PATH_INFO", ""))
            if m is not None:
                remote = client_address(environ, self.archive.settings)
                try:
                    principal = principal_from(environ, self.authenticator, remote)
                except Unauthenticated:
                    return self.app(environ, start_response)  # Flask answers 401 (and audits it)
                try:
                    answer = self._frame(*m.groups(), environ.get("HTTP_ACCEPT"), principal)
                except StorageUnavailable as e:  # Flask answers 503 from it, without a second read
                    environ[PRINCIPAL_ENVIRON], environ[FRAME_ERROR_ENVIRON] = principal, e
                    return self.app(environ, start_response)
                if answer is not None:
                    study, series, sop, _ = m.groups()
                    environ[PRINCIPAL_ENVIRON] = principal
                    environ[ROUTE_ENVIRON] = FRAME_ROUTE
                    self.archive.audit.frame(principal, study, series, sop, remote)
                    content_type, body = answer
                    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                              *cors_headers(environ, self.authenticator, self.origins)])
                    return [body]
        return self.app(environ, start_response)

    def _frame(self, study: str, series: str, sop: str, number: str, accept: str | None,
               principal: Principal) -> tuple[str, bytes] | None:
        try:
            record = self.archive.locate(study, series, sop, principal, self.rows)
            choice = media.frame_format(accept, record.transfer_syntax_uid, single=True)
            if choice is None or choice.decode:
                return None
            data = self.archive.frame(record, int(number))  # out of range: InvalidRequest, Flask's to answer
        except StorageUnavailable:
            raise
        except (ArchiveError, OSError, ValueError):
            return None  # Flask answers it, with the usual error body
        part_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
        if not choice.multipart:
            return part_type, data
        boundary = multipart.new_boundary()
        return (multipart.content_type(boundary, choice.media_type, choice.transfer_syntax),
                multipart.encode(boundary, [(part_type, data)]))
