"""``slidearchive audit``: who did what, when, from the local audit log (and itself audited)."""
from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import datetime, timezone
from typing import Iterable, Iterator

from archive.audit import EVENTS, AuditTrail, LocalUser
from archive.audit.log import read_records


def _when(text: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def select(records: Iterable[dict], args: argparse.Namespace) -> Iterator[dict]:
    for r in records:
        when = datetime.fromisoformat(r["time"])
        if args.since and when < args.since or args.until and when > args.until:
            continue
        if args.user and r.get("user") != args.user or args.event and r.get("event") not in args.event:
            continue
        if args.study and r.get("study") != args.study:
            continue
        if args.failures and not r.get("outcome"):
            continue
        yield r


def _query(record: dict) -> str:
    for obj in record["AuditMessage"].get("ParticipantObjectIdentification", []):
        if "ParticipantObjectQuery" in obj:
            return base64.b64decode(obj["ParticipantObjectQuery"]).decode("utf-8", "replace")
    return ""


def _row(r: dict) -> str:
    ident = r["AuditMessage"]["EventIdentification"]
    what = ", ".join(t["originalText"] for t in ident.get("EventTypeCode", [])) or ident.get("EventOutcomeDescription", "")
    extra = f"frames={r['frames']}" if "frames" in r else _query(r) or what
    return (f"{r['time'][:23]:23}  {r['event']:31}  {r.get('user') or '':24.24}  {r.get('remote') or '-':15}  "
            f"{r.get('outcome', 0):>2}  {r.get('study') or '-':40.40}  {r.get('instances', 0):>5}  {extra}")


def cmd_audit(args: argparse.Namespace) -> int:
    from archive.config import load_settings

    settings = load_settings(args.config, data_dir=args.data_dir)
    trail = AuditTrail(settings.audit, settings.data_dir, settings.dimse.ae_title)
    found = select(read_records(trail.directory, args.since), args)
    count = 0
    if args.format == "table":
        print(f"{'time (UTC)':23}  {'event':31}  {'user':24}  {'remote':15}  {'o':>2}  {'study':40}  {'inst':>5}  detail")
    for r in found:
        count += 1
        if args.limit and count > args.limit:
            break
        print(json.dumps(r, ensure_ascii=False) if args.format == "json" else _row(r))
    used = {k: getattr(args, k) for k in ("user", "event", "study", "since", "until", "failures")
            if getattr(args, k) not in (None, False)}
    trail.record("AuditLogUsed", principal=LocalUser.current(), study=args.study,
                 query={k: str(v) for k, v in used.items()}, detail=f"slidearchive audit, {min(count, args.limit or count)} records shown")
    trail.close()
    sys.stdout.flush()
    return 0


def register(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("audit", parents=[common], help="query the audit log (who did what, when)")
    p.add_argument("--user", help="only this principal (UserID)")
    p.add_argument("--event", action="append", choices=EVENTS, help="only this event (repeatable)")
    p.add_argument("--study", help="only this StudyInstanceUID")
    p.add_argument("--since", type=_when, help="from this ISO 8601 time (UTC unless a zone is given)")
    p.add_argument("--until", type=_when, help="up to this ISO 8601 time")
    p.add_argument("--failures", action="store_true", help="only records with a non-zero outcome")
    p.add_argument("--limit", type=int, default=0, help="at most this many records")
    p.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or JSON lines")
    p.set_defaults(func=cmd_audit)
