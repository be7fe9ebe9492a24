"""`keys` and `collection` commands: API keys (create, list, revoke) and study membership.

Whoever can run these on the archive host can read its data directory, so they
need no credentials of their own; each change is recorded in the audit trail.
"""
from __future__ import annotations

import argparse
import datetime
import sys

from archive.auth.access import ROLES, parse_grants, split_grant


def _settings(args: argparse.Namespace):
    from archive.config import load_settings

    return load_settings(args.config, data_dir=args.data_dir)


def _audit(settings, description: str) -> None:
    from archive.audit import AuditTrail, LocalUser

    trail = AuditTrail(settings.audit, settings.data_dir)
    trail.record("SecurityAlert", principal=LocalUser.current(),
                 detail={"type": "Security Configuration", "description": description})
    trail.close()


def _store(settings):
    from archive.auth.apikeys import KeyStore

    return KeyStore.open(settings)


def cmd_create(args: argparse.Namespace) -> int:
    settings = _settings(args)
    grants = parse_grants(args.grant or [])
    if any(split_grant(g) is None for g in args.grant or []):
        print(f"slidearchive keys: --grant takes COLLECTION or COLLECTION:ROLE ({', '.join(ROLES)})",
              file=sys.stderr)
        return 2
    if not grants and not args.admin:
        print("slidearchive keys: give at least one --grant COLLECTION[:ROLE], or --admin", file=sys.stderr)
        return 2
    key, text = _store(settings).create(args.name, grants, admin=args.admin)
    _audit(settings, f"API key {key.id} ({args.name[:64]}) created")
    print(text)
    print(f"key {key.id} created; it is shown only now. Send it as 'Authorization: Bearer <key>'",
          file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for key in _store(_settings(args)).list():
        created = datetime.datetime.fromtimestamp(key.created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        grants = "admin" if key.admin else " ".join(f"{c}:{'+'.join(sorted(r))}" for c, r in sorted(key.roles.items()))
        state = "revoked" if key.revoked else "active"
        print(f"{key.id}  {state:7}  {created}  {key.name}  {grants}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not _store(settings).revoke(args.id):
        print(f"slidearchive keys: no active key {args.id[:20]}", file=sys.stderr)
        return 1
    _audit(settings, f"API key {args.id[:20]} revoked")
    print(f"key {args.id} revoked (running servers stop accepting it within [auth] token_cache_seconds)")
    return 0


def cmd_collection(args: argparse.Namespace) -> int:
    from archive.catalog import Catalog

    settings = _settings(args)
    catalog = Catalog.open(settings)
    if args.action in ("add", "remove"):
        catalog.set_study_collection(args.study, args.collection, member=args.action == "add")
        _audit(settings, f"study {args.study[:64]} {'added to' if args.action == 'add' else 'removed from'} "
                         f"collection {args.collection[:64]}")
    print(" ".join(catalog.study_collections(args.study)))
    return 0


def register(sub, common: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("keys", help="API keys for scanners, pipelines and administrators")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("create", parents=[common], help="make a key (printed once)")
    p.add_argument("--name", required=True, help="who or what uses it (shown in list and the audit trail)")
    p.add_argument("--grant", action="append", metavar="COLLECTION[:ROLE]",
                   help="a role on a collection (read, write, delete, admin; '*' = every collection); repeatable")
    p.add_argument("--admin", action="store_true", help="an administrator: every role everywhere")
    p.set_defaults(func=cmd_create)
    p = ksub.add_parser("list", parents=[common], help="keys, their state and grants (never the secrets)")
    p.set_defaults(func=cmd_list)
    p = ksub.add_parser("revoke", parents=[common], help="stop accepting a key")
    p.add_argument("id", help="the key id (the part after sa_, as keys list shows it)")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("collection", parents=[common], help="which collections a study belongs to")
    p.add_argument("action", choices=["add", "remove", "show"])
    p.add_argument("study", help="Study Instance UID (as stored)")
    p.add_argument("collection", nargs="?", default="", help="collection name (for add and remove)")
    p.set_defaults(func=cmd_collection)
