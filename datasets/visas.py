"""Dataset grants as GA4GH Passport visas (``ControlledAccessGrants``), for other services to honour.

A visa is a JWT signed by this archive (GA4GH Passport v1.2, "visa document token
format"): ``iss`` the archive, ``sub`` the grantee, ``exp`` at most the grant's
expiry, and ``ga4gh_visa_v1 = {type: ControlledAccessGrants, value: the release's
resolvable identifier (a DOI URL) or its landing page, source: the archive,
by: dac, asserted: when the grant was made}``. The header's ``jku`` names
``/api/datasets/visas/jwks.json``, where the public key is served, so a
verifier (this archive's own ``[[auth.visa_issuer]]`` included) checks it with
nothing but an allow-list of that URL. All signing is PyJWT's.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from archive.config import ConfigError, Settings

from . import metadata, release as releases

KEY_FILE = "visa-signing-key.pem"
_signers: dict[tuple, "Signer"] = {}
_lock = threading.Lock()


def _load_key(settings: Settings):
    """The configured PEM private key, else the archive's own (made on first use, mode 0600)."""
    configured = settings.datasets.visa_key
    path = settings.data_dir / Path(configured).expanduser() if configured else settings.secrets_dir / KEY_FILE
    if not path.exists():
        if configured:
            raise ConfigError(f"[datasets] visa_key: no file at {path}")
        key = ec.generate_private_key(ec.SECP256R1())
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        try:
            os.link(temp, path)  # a concurrent worker that made one first wins; both then read the same key
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[datasets] visa_key: {path.name} is not an unencrypted PEM private key "
                          f"({type(e).__name__})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key, "RS256"
    raise ConfigError("[datasets] visa_key must be an EC P-256 or an RSA (2048 bits or more) private key")


class Signer:
    def __init__(self, settings: Settings):
        self.settings = settings.datasets
        self.key, self.algorithm = _load_key(settings)
        algorithm = jwt.algorithms.ECAlgorithm if self.algorithm == "ES256" else jwt.algorithms.RSAAlgorithm
        public = json.loads(algorithm.to_jwk(self.key.public_key()))
        self.kid = _thumbprint(public)
        self.public_jwk = public | {"kid": self.kid, "use": "sig", "alg": self.algorithm}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def visa(self, grant, base: str, catalog) -> str:
        """The grant as a signed ControlledAccessGrants visa; ``base`` is the archive's URL as the client sees it."""
        r = releases.get_release(catalog, grant.release_id)
        issued = int(time.time())
        expires = min(issued + self.settings.visa_lifetime_seconds, _epoch(grant.expires_at))
        value = metadata.resolvable(r.identifier) if metadata.is_doi(r.identifier) else \
            metadata.urls(base, r)["landing"]
        claims = {"iss": self.settings.visa_issuer or base, "sub": grant.subject, "iat": issued, "exp": expires,
                  "jti": secrets.token_hex(16),
                  "ga4gh_visa_v1": {"type": "ControlledAccessGrants", "value": value,
                                    "source": self.settings.visa_issuer or base, "by": "dac",
                                    "asserted": _epoch(grant.granted_at)}}
        headers = {"typ": "JWT", "kid": self.kid, "jku": f"{base}/api/datasets/visas/jwks.json"}
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)


def signer(settings: Settings) -> Signer:
    """One signer per configuration and process (the key is read once)."""
    key = (str(settings.data_dir), settings.datasets.visa_key)
    with _lock:
        if key not in _signers:
            _signers[key] = Signer(settings)
        return _signers[key]


def _epoch(stamp: str) -> int:
    return int(datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint: SHA-256 of the required members in lexicographic order."""
    required = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
