"""Applying for a release, the data access committee's decision, and the grants it makes.

A researcher applies for one release (project, purpose, members: the principals'
subjects as ``/api/whoami`` names them). A principal with the role ``dac`` on the
release's collection (or ``*``), or an administrator, approves it with an expiry
or rejects it with a reason; nobody decides their own application. Approval
writes one grant per member: read on the collection ``dataset:<id>:v<version>``
until the expiry. ``grants_for`` is what authentication merges into a principal
on every request, so an expired or revoked grant stops reaching the slides at
once, on every door. Every write validates first and changes rows in one
transaction: a bad request changes nothing. Each step is audited by ``Desk``.
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from archive.auth.access import Principal
from archive.errors import Conflict, InvalidRequest, NotAuthorized, NotFound

from . import release as releases
from .schema import now, reader

DAC = "dac"
STATUSES = ("pending", "approved", "rejected", "revoked")
MAX_MEMBERS = 100
MAX_TEXT = 5000
MAX_GRANT_DAYS = 5 * 366
APPLICATION_ID = re.compile(r"app-[0-9a-f]{16}")
TIME = "%Y-%m-%dT%H:%M:%SZ"


@dataclasses.dataclass(frozen=True)
class Application:
    id: str
    release_id: str
    applicant: str
    project: str
    purpose: str
    members: tuple[str, ...]
    status: str
    submitted_at: str
    decided_by: str | None
    decided_at: str | None
    reason: str | None
    expires_at: str | None
    revoked_by: str | None
    revoked_at: str | None
    revoke_reason: str | None

    @property
    def state(self) -> str:
        """The status, with an approval past its expiry shown as expired."""
        if self.status == "approved" and self.expires_at and self.expires_at <= now():
            return "expired"
        return self.status

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["members"] = list(self.members)
        out["state"] = self.state
        return out


@dataclasses.dataclass(frozen=True)
class Grant:
    application_id: str
    subject: str
    release_id: str
    collection: str
    granted_at: str
    expires_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and self.expires_at > now()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"active": self.active}


_APP_COLUMNS = tuple(f.name for f in dataclasses.fields(Application))
_GRANT_COLUMNS = tuple(f.name for f in dataclasses.fields(Grant))


def _application(row) -> Application:
    values = dict(zip(_APP_COLUMNS, row))
    values["members"] = tuple(json.loads(values["members"]))
    return Application(**values)


# --- checks ---------------------------------------------------------------------------------

def _text(body: Mapping[str, Any], name: str, limit: int = MAX_TEXT) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} is required (text)")
    value = value.strip()
    if len(value) > limit:
        raise InvalidRequest(f"{name} is longer than {limit} characters")
    if not all(ch.isprintable() or ch in "\n\t" for ch in value):
        raise InvalidRequest(f"{name} holds control characters")
    return value


def check_members(value: Any) -> tuple[str, ...]:
    """Subjects as ``/api/whoami`` reports them (``apikey:<id>:<name>``, ``<issuer>#<sub>``)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("members is required: a list of subjects (as /api/whoami names them)")
    if len(value) > MAX_MEMBERS:
        raise InvalidRequest(f"at most {MAX_MEMBERS} members")
    out = []
    for i, member in enumerate(value):
        if not isinstance(member, str) or not member.strip() or len(member) > 300 or not member.isprintable():
            raise InvalidRequest(f"members[{i}] must be a subject: 1-300 printable characters")
        out.append(member.strip())
    return tuple(dict.fromkeys(out))


def parse_expiry(value: Any) -> str:
    """``YYYY-MM-DD`` (access until the end of that day, UTC) or an ISO 8601 UTC time; in the future."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("expires is required: a date (YYYY-MM-DD) or a UTC time (YYYY-MM-DDTHH:MM:SSZ)")
    text = value.strip()
    try:
        if len(text) == 10:
            when = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=1, seconds=-1)
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("no time zone")
    except ValueError:
        raise InvalidRequest("expires must be a date (YYYY-MM-DD) or a UTC time (YYYY-MM-DDTHH:MM:SSZ)") from None
    when = when.astimezone(timezone.utc)
    current = datetime.now(timezone.utc)
    if when <= current:
        raise InvalidRequest("expires must be in the future")
    if when > current + timedelta(days=MAX_GRANT_DAYS):
        raise InvalidRequest(f"expires is more than {MAX_GRANT_DAYS} days away")
    return when.strftime(TIME)


def may_decide(principal: Principal, release: releases.Release) -> bool:
    return principal.admin or principal.can(DAC, release.collection)


def check_application_id(value: str) -> str:
    if not APPLICATION_ID.fullmatch(value or ""):
        raise InvalidRequest("an application id looks like app-0123456789abcdef")
    return value


# --- applications ---------------------------------------------------------------------------

def apply(catalog, rid: str, body: Mapping[str, Any], applicant: str) -> Application:
    """A new pending application for release ``rid``; 400 for missing fields, 404 for no such release."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the application must be an object with project, purpose and members")
    unknown = set(body) - {"project", "purpose", "members"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0][:40]!r}; fields: project, purpose, members")
    project, purpose = _text(body, "project", 300), _text(body, "purpose")
    members = check_members(body.get("members"))
    release = releases.get_release(catalog, rid)
    if release.withdrawn_at:
        raise Conflict(f"release {rid} is withdrawn: apply for another release")
    app = Application(f"app-{secrets.token_hex(8)}", rid, applicant[:300], project, purpose, members, "pending",
                      now(), None, None, None, None, None, None, None)
    row = app.to_json()
    row["members"] = json.dumps(list(members), ensure_ascii=False)
    with catalog.transaction() as db:
        db.execute(f"INSERT INTO dataset_application({','.join(_APP_COLUMNS)}) "
                   f"VALUES ({','.join('?' * len(_APP_COLUMNS))})", [row[c] for c in _APP_COLUMNS])
    return app


def get_application(catalog, app_id: str) -> Application:
    check_application_id(app_id)
    row = reader(catalog).execute(f"SELECT {','.join(_APP_COLUMNS)} FROM dataset_application WHERE id=?",
                                  (app_id,)).fetchone()
    if row is None:
        raise NotFound(f"no application {app_id}")
    return _application(row)


def list_applications(catalog, *, release_id: str | None = None, status: str | None = None,
                      involving: str | None = None, limit: int = 500) -> list[Application]:
    """Applications, newest first; ``involving``: only those the subject applied for or is a member of."""
    conds, params = [], []
    if release_id:
        conds.append("release_id=?")
        params.append(release_id)
    if status:
        if status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        conds.append("status=?")
        params.append(status)
    where = f"WHERE {' AND '.join(conds)}" if conds else ""
    rows = reader(catalog).execute(f"SELECT {','.join(_APP_COLUMNS)} FROM dataset_application {where} "
                                   "ORDER BY submitted_at DESC, id", params).fetchall()
    found = [_application(r) for r in rows]
    if involving is not None:
        found = [a for a in found if a.applicant == involving or involving in a.members]
    return found[:limit]


def may_see(principal: Principal, app: Application) -> bool:
    if principal.admin or principal.subject == app.applicant or principal.subject in app.members:
        return True
    return principal.can(DAC, releases.collection_name(app.release_id))


def _decidable(catalog, app_id: str, decider: Principal) -> tuple[Application, releases.Release]:
    app = get_application(catalog, app_id)
    release = releases.get_release(catalog, app.release_id)
    if not may_decide(decider, release):
        raise NotAuthorized(f"deciding on applications for {release.id} needs the dac role on {release.collection}")
    if decider.subject == app.applicant:
        raise NotAuthorized("nobody decides their own application")
    if app.status != "pending":
        raise Conflict(f"application {app_id} is {app.status} already")
    return app, release


def approve(catalog, app_id: str, body: Mapping[str, Any], decider: Principal) -> Application:
    """Approve a pending application: every member reads the release until ``expires``."""
    unknown = set(body) - {"expires", "reason"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0][:40]!r}; fields: expires, reason")
    expires = parse_expiry(body.get("expires"))
    reason = _text(body, "reason", 2000) if body.get("reason") else None
    app, release = _decidable(catalog, app_id, decider)
    if release.withdrawn_at:
        raise Conflict(f"release {release.id} is withdrawn: nothing to grant")
    stamp = now()
    with catalog.transaction() as db:
        changed = db.execute("UPDATE dataset_application SET status='approved', decided_by=?, decided_at=?, reason=?, "
                             "expires_at=? WHERE id=? AND status='pending'",
                             (decider.subject[:300], stamp, reason, expires, app_id)).rowcount
        if changed != 1:
            raise Conflict(f"application {app_id} was decided meanwhile")
        db.executemany("INSERT INTO dataset_grant(application_id, subject, release_id, collection, granted_at, "
                       "expires_at) VALUES (?,?,?,?,?,?)",
                       [(app_id, m, release.id, release.collection, stamp, expires) for m in app.members])
    return get_application(catalog, app_id)


def reject(catalog, app_id: str, body: Mapping[str, Any], decider: Principal) -> Application:
    unknown = set(body) - {"reason"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0][:40]!r}; fields: reason")
    reason = _text(body, "reason", 2000)
    _decidable(catalog, app_id, decider)
    with catalog.transaction() as db:
        changed = db.execute("UPDATE dataset_application SET status='rejected', decided_by=?, decided_at=?, reason=? "
                             "WHERE id=? AND status='pending'", (decider.subject[:300], now(), reason, app_id)).rowcount
        if changed != 1:
            raise Conflict(f"application {app_id} was decided meanwhile")
    return get_application(catalog, app_id)


def revoke(catalog, app_id: str, body: Mapping[str, Any], decider: Principal) -> tuple[Application, int]:
    """Revoke an approval (all members) or some members' grants; returns (application, grants revoked)."""
    unknown = set(body) - {"reason", "members"}
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0][:40]!r}; fields: reason, members")
    reason = _text(body, "reason", 2000)
    members = check_members(body["members"]) if body.get("members") is not None else None
    app = get_application(catalog, app_id)
    release = releases.get_release(catalog, app.release_id)
    if not may_decide(decider, release):
        raise NotAuthorized(f"revoking grants of {release.id} needs the dac role on {release.collection}")
    if app.status != "approved":
        raise Conflict(f"application {app_id} is {app.status}: only an approval can be revoked")
    if members is not None and set(members) - set(app.members):
        raise NotFound(f"{sorted(set(members) - set(app.members))[0][:100]} is not a member of {app_id}")
    stamp = now()
    whom = members or app.members
    with catalog.transaction() as db:
        count = 0
        for member in whom:
            count += db.execute("UPDATE dataset_grant SET revoked_at=? WHERE application_id=? AND subject=? "
                                "AND revoked_at IS NULL", (stamp, app_id, member)).rowcount
        if members is None:
            db.execute("UPDATE dataset_application SET status='revoked', revoked_by=?, revoked_at=?, revoke_reason=? "
                       "WHERE id=?", (decider.subject[:300], stamp, reason, app_id))
    return get_application(catalog, app_id), count


# --- grants ---------------------------------------------------------------------------------

def list_grants(catalog, *, subject: str | None = None, release_id: str | None = None,
                active_only: bool = False) -> list[Grant]:
    conds, params = [], []
    if subject is not None:
        conds.append("subject=?")
        params.append(subject)
    if release_id is not None:
        conds.append("release_id=?")
        params.append(release_id)
    if active_only:
        conds.append("revoked_at IS NULL AND expires_at > ?")
        params.append(now())
    where = f"WHERE {' AND '.join(conds)}" if conds else ""
    rows = reader(catalog).execute(f"SELECT {','.join(_GRANT_COLUMNS)} FROM dataset_grant {where} "
                                   "ORDER BY granted_at, application_id, subject", params).fetchall()
    return [Grant(*r) for r in rows]


def grants_for(catalog, subject: str) -> tuple[dict[str, frozenset[str]], str | None]:
    """(read roles on the collections of ``subject``'s active grants, the earliest of their expiries).

    Called on every credential resolution (authentication), so one indexed query and a cheap clock."""
    rows = reader(catalog).execute(
        "SELECT g.collection, min(g.expires_at) FROM dataset_grant g JOIN dataset_release r ON r.id=g.release_id "
        "WHERE g.subject=? AND g.revoked_at IS NULL AND g.expires_at > ? AND r.withdrawn_at IS NULL "
        "GROUP BY g.collection", (subject, time.strftime(TIME, time.gmtime()))).fetchall()
    if not rows:
        return {}, None
    return {c: frozenset({"read"}) for c, _ in rows}, min(e for _, e in rows)


# --- the audited desk --------------------------------------------------------------------------

class Desk:
    """Applications and decisions for the API and the CLI alike, each step in the audit trail
    (refusals too, outcome 4): a grant or revocation as a change of user security attributes."""

    def __init__(self, archive, principal: Principal, remote: str | None = None, who: Any = None):
        self.archive, self.catalog, self.principal, self.remote = archive, archive.catalog, principal, remote
        self.who = who if who is not None else principal

    def _record(self, description: str, outcome: int = 0, grant: bool = False) -> None:
        kind = "User security Attributes Changed" if grant else "Use of Restricted Function"
        self.archive.audit.record("SecurityAlert", principal=self.who, outcome=outcome, remote=self.remote,
                                  detail={"type": kind, "description": description[:500]})

    def _run(self, what: str, fn, grant: bool = False):
        from archive.errors import ArchiveError

        try:
            result = fn()
        except ArchiveError as e:
            self._record(f"{what}: refused, {e.message}", 4, grant)
            raise
        return result

    def apply(self, rid: str, body: Mapping[str, Any]) -> Application:
        app = self._run(f"apply for {rid[:80]}", lambda: apply(self.catalog, rid, body, self.principal.subject))
        self._record(f"application {app.id} for {rid}: {len(app.members)} members, project {app.project[:100]!r}")
        return app

    def approve(self, app_id: str, body: Mapping[str, Any]) -> Application:
        app = self._run(f"approve {app_id[:40]}", lambda: approve(self.catalog, app_id, body, self.principal), True)
        self._record(f"application {app.id} approved: read on {releases.collection_name(app.release_id)} for "
                     f"{len(app.members)} members until {app.expires_at}", grant=True)
        return app

    def reject(self, app_id: str, body: Mapping[str, Any]) -> Application:
        app = self._run(f"reject {app_id[:40]}", lambda: reject(self.catalog, app_id, body, self.principal))
        self._record(f"application {app.id} rejected: {app.reason}")
        return app

    def revoke(self, app_id: str, body: Mapping[str, Any]) -> tuple[Application, int]:
        app, n = self._run(f"revoke {app_id[:40]}", lambda: revoke(self.catalog, app_id, body, self.principal), True)
        self._record(f"application {app.id}: {n} grants of {releases.collection_name(app.release_id)} revoked: "
                     f"{str(body.get('reason'))[:200]}", grant=True)
        return app, n
