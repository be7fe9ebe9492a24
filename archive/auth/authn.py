"""Credentials -> Principal, for HTTP and DIMSE alike.

A credential is an API key (``sa_...``), sent as a bearer token or as the
password of HTTP Basic / DIMSE user identity, or a JWT access token from a
configured OIDC issuer (bearer, or DIMSE JWT identity). Verified credentials are
cached per credential until the earlier of their expiry and
``[auth] token_cache_seconds``, so a viewer's frame requests cost one dictionary
lookup, and a revoked key stops working within that time.
"""
from __future__ import annotations

import dataclasses
import threading
import time

from archive.auth.access import UNAUTHENTICATED, Principal, anonymous, merge_roles
from archive.auth.apikeys import KeyStore, looks_like_key
from archive.auth.oidc import IssuerVerifier, TokenRejected, VisaVerifier, unverified_issuer
from archive.config import Settings

CACHE_ENTRIES = 10000
#: What a client is told, whatever was wrong (the reason goes to the audit trail only).
REFUSED = "the credentials were not accepted"
REQUIRED = "authentication required: send Authorization: Bearer <token or API key>"


def _dataset_grants(catalog):
    """``subject -> (roles, earliest expiry)`` of dataset grants (datasets.access), when that package is here."""
    try:
        from datasets.access import grants_for
    except ImportError:
        return None
    return lambda subject: grants_for(catalog, subject)


class Unauthenticated(Exception):
    """No usable credentials (HTTP 401). ``reason`` is for the log and the audit trail only."""

    def __init__(self, reason: str, message: str = REFUSED, attempted: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.message = message
        self.attempted = attempted  # credentials were sent (a Security Alert), not merely missing


class Authenticator:
    """One per process: the key store, the trusted issuers and the cache of verified credentials."""

    def __init__(self, settings: Settings, audit=None, catalog=None):
        self.audit = audit  # an archive.audit.AuditTrail, or None
        self.grants = _dataset_grants(catalog) if catalog is not None and settings.auth.enabled else None
        self._granted: dict[tuple[int, frozenset[str]], tuple[Principal, Principal]] = {}
        self.settings = settings.auth
        self.enabled = settings.auth.enabled
        self.keys = KeyStore.open(settings) if self.enabled else None
        self.issuers = {i.issuer: IssuerVerifier(i) for i in settings.auth.issuers}
        self.visas = VisaVerifier(settings.auth.visa_issuers)
        self.anonymous = anonymous(settings.auth.public_collections) if settings.auth.anonymous else None
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    # --- entry points --------------------------------------------------------------------

    def no_credentials(self) -> Principal:
        """Who a request without credentials is: everyone (auth off), anonymous, or refused."""
        if not self.enabled:
            return UNAUTHENTICATED
        if self.anonymous is not None:
            return self.anonymous
        raise Unauthenticated("no credentials", REQUIRED, attempted=False)

    def bearer(self, token: str, remote: str | None = None) -> Principal:
        """An API key or a JWT access token."""
        if not self.enabled:
            return UNAUTHENTICATED
        return self._cached(token, self._verify_bearer, remote)

    def password(self, password: str, remote: str | None = None) -> Principal:
        """HTTP Basic or DIMSE username/password: the password is an API key (the user name is not checked)."""
        if not self.enabled:
            return UNAUTHENTICATED
        return self._cached(password, self._verify_key, remote)

    def refused(self, e: Unauthenticated, remote: str | None, door: str) -> None:
        """Audit a refused credential as a Security Alert (merely missing credentials are not one)."""
        if self.audit is not None and e.attempted:
            self.audit.record("SecurityAlert", principal=None, outcome=4, remote=remote,
                              detail={"type": "Node Authentication", "description": f"{door}: {e.reason}"})

    # --- verification ----------------------------------------------------------------------

    def _cached(self, credential: str, verify, remote: str | None) -> Principal:
        now = time.time()
        hit = self._cache.get(credential)  # a dict read needs no lock; only inserts take it
        if hit is not None and hit[1] > now:
            return self._with_grants(hit[0])
        principal, expires = verify(credential)
        if self.audit is not None:  # once per credential and cache period, not once per request
            self.audit.record("UserAuthentication", principal=principal, remote=remote, detail={"type": "Login"})
        until = min(expires, now + self.settings.token_cache_seconds)
        with self._lock:
            self._cache[credential] = (principal, until)
            while len(self._cache) > CACHE_ENTRIES:  # oldest first
                self._cache.pop(next(iter(self._cache)))
        return self._with_grants(principal)

    def _with_grants(self, principal: Principal) -> Principal:
        """The principal with its dataset grants (read on ``dataset:<id>:v<n>``) merged in, like visa
        collections. Looked up on every resolution (one indexed query), never cached with the
        credential: an expired or revoked grant stops at once. Merged principals are reused, so
        their memoised collections and scope SQL survive from request to request."""
        if self.grants is None or principal.admin:
            return principal
        granted, _ = self.grants(principal.subject)
        if not granted:
            return principal
        key = (id(principal), frozenset(granted))
        hit = self._granted.get(key)
        if hit is not None and hit[0] is principal:
            return hit[1]
        merged = dataclasses.replace(principal, roles=merge_roles(principal.roles, granted))
        with self._lock:
            self._granted[key] = (principal, merged)
            while len(self._granted) > CACHE_ENTRIES:
                self._granted.pop(next(iter(self._granted)))
        return merged

    def _verify_key(self, text: str) -> tuple[Principal, float]:
        assert self.keys is not None
        if not looks_like_key(text):
            raise Unauthenticated("not an API key")
        key = self.keys.verify(text)
        if key is None:
            raise Unauthenticated("unknown or revoked API key")
        return key.principal(), float("inf")

    def _verify_bearer(self, token: str) -> tuple[Principal, float]:
        if looks_like_key(token):
            return self._verify_key(token)
        if token.count(".") != 2:
            raise Unauthenticated("malformed bearer token")
        try:
            verifier = self.issuers.get(unverified_issuer(token))
            if verifier is None:
                raise TokenRejected("issuer not trusted")
            claims = verifier.verify(token)
        except TokenRejected as e:
            raise Unauthenticated(f"token refused: {e}") from None
        roles, admin = verifier.grants(claims)
        visas = verifier.passport(token, claims)
        if visas:
            roles = merge_roles(roles, self.visas.grants(visas))
        subject = f"{verifier.config.issuer}#{str(claims['sub'])[:128]}"
        return Principal(subject, "oidc", roles, admin), float(claims["exp"])
