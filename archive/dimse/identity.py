"""DIMSE user identity (PS3.7 D.3.3.7): the association's principal, the same as over HTTP.

A requestor may send a user name and password (the password is an API key; the
user name is not checked) or a JWT access token. A bad one rejects the
association. Without identity negotiation the principal comes from the peer's
``[[dimse.peer]] collections`` grants, else from anonymous access (public
collections, read only), else it may see and store nothing. With authentication
off every association acts as an administrator, as before.
"""
from __future__ import annotations

import logging

from archive.auth.access import Principal, parse_grants
from archive.auth.authn import Authenticator, Unauthenticated
from archive.dimse.policy import PeerPolicy, calling_ae

log = logging.getLogger(__name__)
USERNAME, USERNAME_PASSCODE, KERBEROS, SAML, JWT = 1, 2, 3, 4, 5


def _decode(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace").strip()


def handle_user_id(event, authenticator: Authenticator):
    """EVT_USER_ID: (verified, server response); an unverified identity rejects the association."""
    remote = getattr(event.assoc.requestor, "address", None)
    try:
        if event.user_id_type == USERNAME_PASSCODE:
            principal = authenticator.password(_decode(event.secondary_field), remote)
        elif event.user_id_type == JWT:
            principal = authenticator.bearer(_decode(event.primary_field), remote)
        else:
            raise Unauthenticated(f"user identity type {event.user_id_type} not supported")
    except Unauthenticated as e:
        authenticator.refused(e, remote, f"DIMSE association from {calling_ae(event)}")
        log.warning("association from %s: user identity refused", calling_ae(event))
        return False, None
    event.assoc.principal = principal
    return True, None


def association_principal(event, authenticator: Authenticator, policy: PeerPolicy) -> Principal:
    """The principal of the association (negotiated identity, else the peer's grants, else anonymous)."""
    found = getattr(event.assoc, "principal", None)
    if found is not None:
        return found
    ae = calling_ae(event)  # the audit trail names such a peer by its AE title
    grants = parse_grants(policy.grants.get(ae, ()))
    if not authenticator.enabled:
        principal = Principal(ae, "ae", {}, admin=True)
    elif grants:
        principal = Principal(ae, "ae", grants)
    elif authenticator.anonymous is not None:
        principal = authenticator.anonymous
    else:
        principal = Principal(ae, "ae", {})
    event.assoc.principal = principal
    return principal
