"""A fault-injecting TCP proxy in front of the real s3proxy, for the storage fault tests.

``mode`` decides what a new request meets:
- ``"pass"``: bytes relayed both ways to s3proxy;
- ``"500"`` / ``"503"``: the request head is read and answered with that status and an
  S3 error body (InternalError / SlowDown), as an overloaded S3 does;
- ``"hang"``: the connection is accepted and never answered (a timeout);
- ``"reset"``: the connection is closed at once.
- ``"cut"``: relayed until ``cut_after`` bytes went upstream in all, then every connection
  is closed and later ones reset (S3 lost in the middle of an upload).
``fail_after`` counts connections relayed before the mode applies (with ``"cut"``, -1 means
cut once and pass again after). Changing the mode
closes the relayed connections, so a client's kept-alive connection meets the new mode
on its next request.
"""
from __future__ import annotations

import socket
import threading

_BODIES = {"500": ("Internal Server Error", "InternalError"), "503": ("Service Unavailable", "SlowDown")}


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"
        self.fail_after = 0
        self.cut_after = 0
        self.sent = 0
        self.requests = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str, fail_after: int = 0, cut_after: int = 0) -> None:
        with self._lock:
            self.mode, self.fail_after, self.cut_after, self.requests, self.sent = mode, fail_after, cut_after, 0, 0
            for s in list(self._open):
                _close(s)
            self._open.clear()

    def close(self) -> None:
        self._stopped = True
        _close(self.listener)
        self.set("pass")

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _serve(self, client: socket.socket) -> None:
        self._track(client)
        with self._lock:
            self.requests += 1
            mode = self.mode if self.requests > self.fail_after else "pass"
        if mode == "reset" or (mode == "cut" and self.sent >= self.cut_after):
            _close(client)
        elif mode == "hang":
            return  # kept open, never answered; closed by the next set()
        elif mode in _BODIES:
            self._answer(client, mode)
        else:
            self._relay(client)

    def _answer(self, client: socket.socket, status: str) -> None:
        reason, code = _BODIES[status]
        head = b""
        try:
            client.settimeout(5)
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(65536)
                if not chunk:
                    break
                head += chunk
            body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                    f"<Message>injected {status}</Message></Error>").encode()
            client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                           f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass
        _close(client)

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream_bound: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream_bound and self.mode == "cut":
                    with self._lock:
                        self.sent += len(data)
                        cut = self.sent >= self.cut_after
                    if cut:
                        self._cut()
                        if self.fail_after < 0:  # a single cut: what follows passes again
                            self.mode = "pass"
                        return
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)

    def _cut(self) -> None:
        with self._lock:
            for s in list(self._open):
                _close(s)
            self._open.clear()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
