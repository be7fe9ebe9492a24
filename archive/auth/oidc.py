"""JWT access tokens from trusted OpenID Connect issuers, and GA4GH Passport visas.

All signature work is PyJWT's; this module only decides which keys and which
claims to trust. An issuer's keys come from its discovery document's
``jwks_uri``; a token naming an unknown ``kid`` refetches them (at most once per
``REFRESH_SECONDS``, so a stream of made-up kids cannot hammer the provider).
Only asymmetric algorithms are accepted (see archive.config.ALLOWED_ALGORITHMS):
``alg: none`` and an HS256 token "signed" with the public key are refused before
any key is looked up.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import Any, Iterable

import jwt

from archive.auth.access import merge_roles, parse_grants
from archive.config import ALLOWED_ALGORITHMS, OidcIssuer, VisaIssuer

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5
JWKS_LIFETIME = 3600
FETCH_TIMEOUT = 5
LEEWAY = 30
PASSPORT_CLAIM = "ga4gh_passport_v1"


class TokenRejected(Exception):
    """Why a token was refused (for the log and the audit trail; never sent to the client)."""


def fetch_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
        if response.status != 200:
            raise TokenRejected(f"{url} answered {response.status}")
        return json.loads(response.read(1 << 20))


class KeySet:
    """A JWKS URL's keys by ``kid``, fetched lazily, refetched on an unknown kid (rate-limited)."""

    def __init__(self, url: str):
        self.url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            document = fetch_json(self.url)
        except (OSError, ValueError) as e:
            raise TokenRejected(f"cannot fetch the JWKS at {self.url}: {type(e).__name__}") from None
        keys = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue  # symmetric keys are never trusted
            try:
                keys[entry.get("kid", "")] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type this PyJWT cannot use
        self._keys, self._fetched = keys, time.monotonic()

    def key(self, kid: str | None) -> jwt.PyJWK:
        kid = kid or ""
        with self._lock:
            stale = time.monotonic() - self._fetched
            if kid not in self._keys and (stale > REFRESH_SECONDS or not self._fetched) or stale > JWKS_LIFETIME:
                self._refresh()
            found = self._keys.get(kid)
        if found is None:
            raise TokenRejected("no key with this kid at the issuer")
        return found


def _header(token: str, algorithms: Iterable[str]) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRejected("not a JWT") from None
    alg = header.get("alg")
    if alg not in algorithms or alg not in ALLOWED_ALGORITHMS:
        raise TokenRejected(f"algorithm {str(alg)[:16]!r} not allowed")
    return header


def unverified_issuer(token: str) -> str:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenRejected("not a JWT") from None
    return str(claims.get("iss", "")).rstrip("/")


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


class IssuerVerifier:
    """One trusted issuer: discovery, keys, and the checks of iss, aud, exp, nbf and the algorithm."""

    def __init__(self, config: OidcIssuer):
        self.config = config
        self._keys: KeySet | None = None
        self.userinfo_endpoint = ""
        self._lock = threading.Lock()

    def keyset(self) -> KeySet:
        with self._lock:
            if self._keys is None:
                url = self.config.discovery_url or f"{self.config.issuer}/.well-known/openid-configuration"
                try:
                    document = fetch_json(url)
                except (OSError, ValueError) as e:
                    raise TokenRejected(f"cannot fetch the discovery document: {type(e).__name__}") from None
                if str(document.get("issuer", "")).rstrip("/") != self.config.issuer or not document.get("jwks_uri"):
                    raise TokenRejected("the discovery document names another issuer or no jwks_uri")
                self._keys = KeySet(document["jwks_uri"])
                self.userinfo_endpoint = str(document.get("userinfo_endpoint") or "")
            return self._keys

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, issuer, audience and validity period check out."""
        header = _header(token, self.config.algorithms)
        key = self.keyset().key(header.get("kid"))
        try:
            claims = jwt.decode(token, key.key, algorithms=list(self.config.algorithms),
                                audience=list(self.config.audience), leeway=LEEWAY,
                                options={"require": ["exp", "iss", "sub"], "verify_iss": False})
        except jwt.PyJWTError as e:
            raise TokenRejected(f"{type(e).__name__}") from None
        if str(claims.get("iss", "")).rstrip("/") != self.config.issuer:
            raise TokenRejected("InvalidIssuerError")
        return claims

    def passport(self, token: str, claims: dict[str, Any]) -> Any:
        """The token's visas: its ``ga4gh_passport_v1`` claim, else (when the token's scope asks for
        passports, as LS Login's do) the same claim from the issuer's userinfo endpoint."""
        if not self.config.passports:
            return None
        if PASSPORT_CLAIM in claims:
            return claims[PASSPORT_CLAIM]
        if PASSPORT_CLAIM not in str(claims.get("scope", "")).split() or not self.userinfo_endpoint:
            return None
        request = urllib.request.Request(self.userinfo_endpoint, headers={"Authorization": f"Bearer {token}",
                                                                          "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
                info = json.loads(response.read(1 << 20))
        except (OSError, ValueError) as e:
            log.info("userinfo for passport visas not available: %s", type(e).__name__)
            return None
        return info.get(PASSPORT_CLAIM) if isinstance(info, dict) else None

    def grants(self, claims: dict[str, Any]) -> tuple[dict[str, frozenset[str]], bool]:
        """(roles per collection, admin) from the collections claim."""
        value = _claim(claims, self.config.collections_claim)
        if isinstance(value, str):
            value = value.split()
        grants = parse_grants(v for v in value or [] if isinstance(v, str)) if isinstance(value, list) else {}
        every = grants.pop("*", frozenset())
        if every - {"admin"}:
            grants["*"] = every - {"admin"}
        return grants, "admin" in every


class VisaVerifier:
    """GA4GH Passport visas (ControlledAccessGrants) from the configured visa issuers."""

    def __init__(self, issuers: Iterable[VisaIssuer]):
        self.issuers = {i.issuer.rstrip("/"): i for i in issuers}
        self._keysets: dict[str, KeySet] = {}
        self._lock = threading.Lock()

    def _keyset(self, url: str) -> KeySet:
        with self._lock:
            if url not in self._keysets:
                self._keysets[url] = KeySet(url)
            return self._keysets[url]

    def grants(self, visas: Any) -> dict[str, frozenset[str]]:
        """Roles per collection from every visa that checks out; the others are ignored (and logged)."""
        out: list[dict[str, frozenset[str]]] = []
        for visa in visas if isinstance(visas, list) else []:
            try:
                out.append(self._grant(visa))
            except TokenRejected as e:
                log.info("visa ignored: %s", e)
        return merge_roles(*out)

    def _grant(self, visa: Any) -> dict[str, frozenset[str]]:
        if not isinstance(visa, str):
            raise TokenRejected("not a JWT")
        issuer = self.issuers.get(unverified_issuer(visa))
        if issuer is None:
            raise TokenRejected("visa issuer not configured")
        header = _header(visa, ALLOWED_ALGORITHMS)
        jku = str(header.get("jku", "")).rstrip("/")
        if jku not in issuer.jku:
            raise TokenRejected("visa jku not on the allow-list")
        key = self._keyset(jku).key(header.get("kid"))
        try:
            claims = jwt.decode(visa, key.key, algorithms=list(ALLOWED_ALGORITHMS), leeway=LEEWAY,
                                options={"require": ["exp", "iss"], "verify_aud": False})
        except jwt.PyJWTError as e:
            raise TokenRejected(f"visa {type(e).__name__}") from None
        body = claims.get("ga4gh_visa_v1")
        if not isinstance(body, dict) or body.get("type") != "ControlledAccessGrants":
            raise TokenRejected("not a ControlledAccessGrants visa")
        if "conditions" in body:
            raise TokenRejected("conditional visa")
        collection = dict(issuer.collections).get(str(body.get("value", "")))
        if collection is None:
            raise TokenRejected("visa value maps to no collection")
        return {collection: frozenset(issuer.roles)}
