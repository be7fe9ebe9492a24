"""TLS for DIMSE associations (PS3.15 Annex B, BCP 195: TLS 1.2 or newer) and the HTTPS options of granian.

pynetdicom wraps each accepted socket in the server's accept loop. A handshake
done there would let one silent client stall every new association, so the
context here defers the handshake to the association's own thread (its first
read), where a failure (no client certificate, an unknown CA, plain DICOM on the
TLS port) ends only that connection and is audited as a Security Alert (Node
Authentication).
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from archive.config import TlsSettings

log = logging.getLogger(__name__)

#: BCP 195 (RFC 9325) TLS 1.2 suites: forward secrecy and AEAD only; TLS 1.3 suites are OpenSSL's defaults.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"


class _DeferredHandshakeSocket(ssl.SSLSocket):
    """Handshakes on first use (in the association's thread) and audits a failed one."""

    def _handshake_once(self) -> None:
        if getattr(self, "_handshake_done", False):
            return
        self._handshake_done = True
        previous = self.gettimeout()
        self.settimeout(getattr(self.context, "handshake_timeout", None))  # a stalled ClientHello holds no thread
        try:
            self.do_handshake()
        except (ssl.SSLEOFError, ConnectionError):
            raise  # closed before a ClientHello: a port probe, not a failed authentication
        except (ssl.SSLError, OSError) as e:
            context = self.context
            audit = getattr(context, "audit", None)
            remote = _peer(self)
            log.warning("TLS handshake from %s failed: %s", remote, getattr(e, "reason", None) or type(e).__name__)
            if audit is not None:
                audit.record("SecurityAlert", principal=None, outcome=4, remote=remote,
                             detail={"type": "Node Authentication",
                                     "description": f"TLS handshake refused: {getattr(e, 'reason', None) or type(e).__name__}"})
            raise
        finally:
            self.settimeout(previous)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._handshake_once()
        return super().recv(buflen, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._handshake_once()
        super().sendall(data, flags)


class DeferredHandshakeContext(ssl.SSLContext):
    sslsocket_class = _DeferredHandshakeSocket
    audit: Any = None
    handshake_timeout: float | None = None

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, *args, **kwargs):  # noqa: D102
        return super().wrap_socket(sock, server_side, False, *args, **kwargs)


def dimse_context(tls: TlsSettings, audit: Any = None, handshake_timeout: float | None = None) -> ssl.SSLContext:
    """The server context for DIMSE associations; client certificates checked against ``ca_file``."""
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(Path(tls.cert_file).expanduser(), Path(tls.key_file).expanduser())
    if tls.ca_file:
        context.load_verify_locations(cafile=str(Path(tls.ca_file).expanduser()))
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    context.audit = audit
    context.handshake_timeout = handshake_timeout
    return context


def client_context(tls: TlsSettings) -> ssl.SSLContext:
    """For associations the archive opens (C-MOVE to a ``tls = true`` remote): our certificate, theirs checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(Path(tls.ca_file).expanduser()))
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.load_cert_chain(Path(tls.cert_file).expanduser(), Path(tls.key_file).expanduser())
    return context


def granian_options(tls: TlsSettings) -> dict[str, Any]:
    """Keyword arguments for ``Granian(...)`` that make it serve HTTPS (empty when [tls] http is off)."""
    if not tls.http:
        return {}
    from granian.constants import SSLProtocols

    options: dict[str, Any] = {"ssl_cert": Path(tls.cert_file).expanduser(),
                               "ssl_key": Path(tls.key_file).expanduser(),
                               "ssl_protocol_min": SSLProtocols("tls" + tls.min_version)}
    if tls.ca_file:
        options["ssl_ca"] = Path(tls.ca_file).expanduser()
        options["ssl_client_verify"] = tls.require_client_cert
    return options


def _peer(sock: ssl.SSLSocket) -> str | None:
    try:
        return sock.getpeername()[0]
    except OSError:
        return None
