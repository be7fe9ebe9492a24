"""``slidearchive dataset apply|approve|reject|revoke|applications|grants``.

On the archive host, whoever runs these can read the data directory, so they act
for the data access committee with the operator's login name (``local:<user>``) as
the decider. With ``--url`` (and a key or token in ``--token`` or
``SLIDEARCHIVE_TOKEN``) they are a client of that archive's API instead, as the
researcher or committee member the credentials name. Either way every step goes
to the audit trail (``datasets.access.Desk``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Any, Iterator

from archive.auth.access import Principal

from . import access
from .release import release_id


@contextlib.contextmanager
def _desk(args: argparse.Namespace) -> Iterator[access.Desk]:
    from archive.audit import LocalUser

    from .cli import _open

    curation = _open(args)
    who = LocalUser.current()
    operator = Principal(f"local:{who.subject}", "local", {}, admin=True)
    try:
        yield access.Desk(curation.archive, operator, None, who)
    finally:
        curation.archive.audit.close()
        curation.catalog.close()


class _Remote(argparse.Action):
    """``--url``: this command talks to that archive's API (no local data directory needed)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.remote = True


def _call(args: argparse.Namespace, method: str, path: str, body: dict | None = None,
          params: dict | None = None) -> dict[str, Any]:
    import requests

    from .download_cli import TOKEN_ENV, _check

    token = args.token or os.environ.get(TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = requests.request(method, f"{args.url.rstrip('/')}/api/datasets{path}", json=body, params=params,
                             headers=headers, timeout=60)
    except requests.RequestException as e:
        from .download_cli import RemoteRefused

        raise RemoteRefused(f"{args.url} did not answer ({type(e).__name__})") from None
    _check(r, f"{method} /api/datasets{path}")
    return r.json()


def _app(obj: dict[str, Any]) -> access.Application:
    fields = {k: obj.get(k) for k in access._APP_COLUMNS}
    fields["members"] = tuple(fields["members"] or ())
    return access.Application(**fields)


def _print(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False) if args.json else text)


def _line(app: access.Application) -> str:
    until = f" until {app.expires_at}" if app.expires_at else ""
    return f"{app.id}  {app.release_id}  {app.state}{until}  {app.project}  members: {', '.join(app.members)}"


def cmd_apply(args: argparse.Namespace) -> int:
    body = {"project": args.project, "purpose": args.purpose, "members": args.member or []}
    if args.url:
        app = _app(_call(args, "POST", f"/{args.id}/releases/{args.version}/applications", body))
    else:
        with _desk(args) as desk:
            app = desk.apply(release_id(args.id, args.version), body)
    _print(args, app.to_json(), f"application {app.id} submitted for {app.release_id} (pending)")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    if args.url:
        action = args.dataset_command
        body = {"reason": args.reason} if args.reason else {}
        if action == "approve":
            body["expires"] = args.expires
        if action == "revoke" and args.member:
            body["members"] = args.member
        answer = _call(args, "POST", f"/applications/{args.application}/{action}", body)
        app = _app(answer)
        text = f"revoked ({answer['revoked_grants']} grants)" if action == "revoke" else f"{action}d"
        _print(args, app.to_json(), f"application {app.id} {text}: {_line(app)}")
        return 0
    with _desk(args) as desk:
        if args.dataset_command == "approve":
            body = {"expires": args.expires, **({"reason": args.reason} if args.reason else {})}
            app, text = desk.approve(args.application, body), "approved"
        elif args.dataset_command == "reject":
            app, text = desk.reject(args.application, {"reason": args.reason}), "rejected"
        else:
            body = {"reason": args.reason, **({"members": args.member} if args.member else {})}
            app, n = desk.revoke(args.application, body)
            text = f"revoked ({n} grants)"
    _print(args, app.to_json(), f"application {app.id} {text}: {_line(app)}")
    return 0


def cmd_applications(args: argparse.Namespace) -> int:
    rid = release_id(args.id, args.version) if args.id and args.version else None
    if args.url:
        params = {k: v for k, v in (("release", rid), ("status", args.status)) if v}
        found = [_app(a) for a in _call(args, "GET", "/applications", params=params)["applications"]]
    else:
        with _desk(args) as desk:
            found = access.list_applications(desk.catalog, release_id=rid, status=args.status)
    if args.json:
        _print(args, {"applications": [a.to_json() for a in found]}, "")
    else:
        for app in found:
            print(_line(app))
    return 0


def cmd_grants(args: argparse.Namespace) -> int:
    rid = release_id(args.id, args.version) if args.id and args.version else None
    if args.url:
        params = {k: v for k, v in (("release", rid), ("subject", args.subject), ("active", args.active and "1"))
                  if v}
        found = [access.Grant(**{k: g.get(k) for k in access._GRANT_COLUMNS})
                 for g in _call(args, "GET", "/grants", params=params)["grants"]]
    else:
        with _desk(args) as desk:
            found = access.list_grants(desk.catalog, subject=args.subject, release_id=rid, active_only=args.active)
    if args.json:
        _print(args, {"grants": [g.to_json() for g in found]}, "")
    else:
        for g in found:
            state = "active" if g.active else ("revoked " + g.revoked_at if g.revoked_at else "expired")
            print(f"{g.subject}  {g.release_id}  until {g.expires_at}  {state}  ({g.application_id})")
    return 0


def register(sub: Any, output: argparse.ArgumentParser) -> None:
    remote = argparse.ArgumentParser(add_help=False, parents=[output])
    remote.add_argument("--url", action=_Remote, default=None,
                        help="act through this archive's API (e.g. https://archive.example.org), not on this host")
    remote.add_argument("--token", help="with --url: an API key or access token (default: $SLIDEARCHIVE_TOKEN)")
    remote.set_defaults(remote=False)
    output = remote
    a = sub.add_parser("apply", parents=[output], help="apply for access to a release")
    a.add_argument("id", help="dataset id")
    a.add_argument("version", type=int)
    a.add_argument("--project", required=True)
    a.add_argument("--purpose", required=True)
    a.add_argument("--member", action="append", required=True,
                   help="a member's subject, as /api/whoami names it (repeat)")
    a.set_defaults(func=cmd_apply)
    ap = sub.add_parser("approve", parents=[output], help="approve an application (data access committee)")
    ap.add_argument("application", help="app-...")
    ap.add_argument("--expires", required=True, help="YYYY-MM-DD (through that day, UTC) or YYYY-MM-DDTHH:MM:SSZ")
    ap.add_argument("--reason")
    ap.set_defaults(func=cmd_decide)
    rj = sub.add_parser("reject", parents=[output], help="reject an application, with a reason")
    rj.add_argument("application")
    rj.add_argument("--reason", required=True)
    rj.set_defaults(func=cmd_decide)
    rv = sub.add_parser("revoke", parents=[output], help="revoke an approval (or some members' grants)")
    rv.add_argument("application")
    rv.add_argument("--reason", required=True)
    rv.add_argument("--member", action="append", help="revoke only this member's grant (repeat)")
    rv.set_defaults(func=cmd_decide)
    for name, fn, text in (("applications", cmd_applications, "list applications"),
                           ("grants", cmd_grants, "list grants")):
        p = sub.add_parser(name, parents=[output], help=text)
        p.add_argument("id", nargs="?", help="dataset id (with version: only that release)")
        p.add_argument("version", nargs="?", type=int)
        if name == "applications":
            p.add_argument("--status", choices=access.STATUSES)
        else:
            p.add_argument("--subject", help="only this member's grants")
            p.add_argument("--active", action="store_true", help="only grants in force now")
        p.set_defaults(func=fn)
