"""Who is asking, and what they may do: the one ``Principal`` every door passes down.

A principal holds, per collection, the roles it was granted (read, write, delete,
admin). The catalog turns ``collections(role)`` into a join on study-collection
rows inside each SQL query, so paging, counts and facets only ever see what the
principal may see. ``admin`` on a principal (or the role "admin" on a collection,
or the collection "*") grants every role there.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

#: ``curator`` curates datasets of a collection's series, ``dac`` decides applications for a release's
#: collection (``dataset:<id>:v<n>``, or ``*``); neither implies read.
ROLES = ("read", "write", "delete", "admin", "curator", "dac")
#: What a route may declare it needs (``public`` routes answer without any principal).
REQUIREMENTS = ROLES + ("public", "authenticated")
ALL = "*"


@dataclasses.dataclass(frozen=True)
class Principal:
    """A person or system, as authenticated by an API key, an OIDC token or a DIMSE identity."""

    subject: str
    kind: str  # apikey | oidc | anonymous (also everyone when auth is off) | dimse | system
    roles: Mapping[str, frozenset[str]]
    admin: bool = False

    def can(self, role: str, collection: str) -> bool:
        if self.admin:
            return True
        for name in (collection, ALL):
            granted = self.roles.get(name, frozenset())
            if role in granted or "admin" in granted:
                return True
        return False

    def collections(self, role: str = "read") -> frozenset[str] | None:
        """Collections where ``role`` is granted; None means every collection (an admin, or "*").

        Memoised per principal (a cached principal answers every frame request of a viewer)."""
        memo = self.__dict__.setdefault("_collections", {})
        if role not in memo:
            memo[role] = None if self.admin or self.can(role, ALL) else frozenset(
                c for c, granted in self.roles.items() if role in granted or "admin" in granted)
        return memo[role]

    def can_any(self, role: str) -> bool:
        wanted = self.collections(role)
        return wanted is None or bool(wanted)


def merge_roles(*grants: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for grant in grants:
        for collection, roles in grant.items():
            out.setdefault(collection, set()).update(roles)
    return {c: frozenset(r) for c, r in out.items()}


def split_grant(value: str) -> tuple[str, str] | None:
    """``"breast"`` -> ("breast", "read"), ``"breast:write"`` -> ("breast", "write"); a collection name
    with colons takes its role after the last one (``"dataset:skin:v1:dac"``); None when no role fits."""
    value = str(value)
    name, _, role = value.partition(":")
    if not role:
        return (name, "read") if name else None
    if role in ROLES:
        return name, role
    name, _, role = value.rpartition(":")
    return (name, role) if name and role in ROLES else None


def parse_grants(values: Iterable[str]) -> dict[str, frozenset[str]]:
    """``["lung", "breast:write", "*:admin", "dataset:skin:v1:read"]`` -> roles per collection."""
    out: dict[str, set[str]] = {}
    for value in values:
        found = split_grant(value)
        if found is not None:
            out.setdefault(found[0], set()).add(found[1])
    return {c: frozenset(r) for c, r in out.items()}


#: The archive itself (ingest, indexing, verify): sees everything, never answers a request.
SYSTEM = Principal("slidearchive", "system", {}, admin=True)
#: Every request when authentication is off ([auth] enabled = false, loopback only).
#: Nobody is authenticated, so the audit trail names it "anonymous", as any unauthenticated user.
UNAUTHENTICATED = Principal("anonymous", "anonymous", {}, admin=True)


def anonymous(public_collections: Iterable[str]) -> Principal:
    """Read-only on the collections the configuration marks public."""
    return Principal("anonymous", "anonymous", {c: frozenset({"read"}) for c in public_collections})


def target_collection(principal: Principal, asked: str | None, default: str) -> str:
    """Where new instances go: the collection asked for, else the principal's only writable one,
    else ``default``; raises NotAuthorized when the principal may not write there."""
    from archive.errors import InvalidRequest, NotAuthorized

    writable = principal.collections("write")
    if asked:
        if len(asked) > 64 or not asked.isprintable() or asked == ALL:
            raise InvalidRequest("a collection name is 1-64 printable characters")
        collection = asked
    elif writable is not None and len(writable) == 1:
        collection = next(iter(writable))
    else:
        collection = default
    if not principal.can("write", collection):
        raise NotAuthorized(f"this principal may not write to collection {collection[:64]!r}")
    return collection


def requires(need: str):
    """Declare what a route needs: a role (read, write, delete, admin), "authenticated" or "public".

    The HTTP layer refuses a request to a route that declares nothing (deny by default).
    """
    if need not in REQUIREMENTS:
        raise ValueError(f"unknown requirement {need!r}")

    def mark(view):
        view.required = need
        return view

    return mark
