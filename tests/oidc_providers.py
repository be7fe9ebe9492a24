"""Real token issuers on loopback for the authentication tests (no tests here).

- ``MockOAuth2``: no.nav.security:mock-oauth2-server (Maven Central; fetched by
  scripts/test.sh into tests/oidc/target), a real OAuth2/OIDC server whose token
  claims are set per ``scope`` through its JSON configuration.
- ``LoopbackIssuer``: a discovery document and a JWKS served by http.server, with a
  key pair the test holds, for GA4GH visas and token shapes no provider would issue
  (future ``nbf``, a rotated key, a token about to expire).
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import free_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc" / "target"
MOCK_MAIN = "no.nav.security.mock.oauth2.StandaloneMockOAuth2ServerKt"


class MockOAuth2:
    """mock-oauth2-server as a child process; ``callbacks`` is its tokenCallbacks list."""

    def __init__(self, root: Path, callbacks: list[dict], interactive: bool = False):
        """``interactive``: its authorization endpoint shows a login form (user name, extra claims)."""
        jars = OIDC_DIR / "dependency"
        assert jars.is_dir(), "mock-oauth2-server not fetched: run mvn -f tests/oidc/pom.xml dependency:copy-dependencies"
        self.port = free_port()
        self.log = root / "mock-oauth2.log"
        env = dict(os.environ, SERVER_PORT=str(self.port), SERVER_HOSTNAME="127.0.0.1",
                   JSON_CONFIG=json.dumps({"interactiveLogin": interactive, "tokenCallbacks": callbacks}))
        self.process = subprocess.Popen(["java", "-Xmx256m", "-cp", f"{jars}/*", MOCK_MAIN], env=env,
                                        stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.issuer('probe')}/.well-known/openid-configuration", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mock-oauth2-server did not start:\n{self.log.read_text()[-2000:]}")

    def issuer(self, issuer_id: str = "test") -> str:
        return f"http://127.0.0.1:{self.port}/{issuer_id}"

    def token(self, scope: str, issuer_id: str = "test") -> str:
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "tests",
                                       "client_secret": "tests", "scope": scope}).encode()
        with urllib.request.urlopen(f"{self.issuer(issuer_id)}/token", data=body, timeout=10) as r:
            return json.loads(r.read())["access_token"]

    def jwks(self, issuer_id: str = "test") -> dict:
        with urllib.request.urlopen(f"{self.issuer(issuer_id)}/jwks", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class LoopbackIssuer:
    """An issuer whose keys the test holds: /.well-known/openid-configuration and /jwks on loopback."""

    def __init__(self):
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.userinfo: dict = {}  # what /userinfo answers to any bearer token
        self.add_key("k1")
        issuer = self
        self.port = free_port()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.jwks_url, "userinfo_endpoint": f"{issuer.url}/userinfo"}
                elif self.path == "/jwks":
                    body = issuer.jwks()
                elif self.path == "/userinfo" and self.headers.get("Authorization", "").startswith("Bearer "):
                    body = issuer.userinfo
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def public_pem(self, kid: str = "k1") -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.keys[kid].public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwks(self) -> dict:
        keys = []
        for kid, key in self.keys.items():
            entry = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append(dict(entry, kid=kid, use="sig", alg="RS256"))
        return {"keys": keys}

    def sign(self, claims: dict, kid: str = "k1", jku: str | None = None, **header) -> str:
        headers = dict(header, kid=kid)
        if jku is not None:
            headers["jku"] = jku
        return jwt.encode(claims, self.keys[kid], algorithm="RS256", headers=headers)

    def visa(self, value: str, subject: str = "alice", exp_in: float = 3600, conditions=None,
             jku: str | None = None) -> str:
        body = {"type": "ControlledAccessGrants", "value": value, "source": "https://dac.example",
                "by": "dac", "asserted": int(time.time()) - 60}
        if conditions is not None:
            body["conditions"] = conditions
        now = int(time.time())
        return self.sign({"iss": self.url, "sub": subject, "iat": now, "exp": now + int(exp_in),
                          "ga4gh_visa_v1": body}, jku=jku or self.jwks_url)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
