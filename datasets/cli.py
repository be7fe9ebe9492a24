"""``slidearchive dataset``: curate datasets on the archive host (create, add, remove, cases,
release, withdraw, list, show).

Like ``keys`` and ``collection``, whoever runs this can read the data directory, so it
acts as the archive itself (every collection) and records each step in the audit
trail under the operator's login name. Other modules add subcommands to the same
``dataset`` command through ``EXTENSIONS`` (each a module with ``register(sub, common)``).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from archive.errors import InvalidRequest

#: Modules that add ``dataset`` subcommands (``register(subparsers, common)``), when present.
EXTENSIONS = ("datasets.access_cli", "datasets.download_cli")


@dataclasses.dataclass
class _LocalArchive:
    """What curation needs of an archive, without opening storage or de-identification."""

    settings: Any
    catalog: Any
    audit: Any


@contextlib.contextmanager
def _curating(args: argparse.Namespace) -> Iterator[Any]:
    """A Curation of the archive at --data-dir, closed (audit flushed) however the command ends."""
    curation = _open(args)
    try:
        yield curation
    finally:
        curation.archive.audit.close()
        curation.catalog.close()


def _open(args: argparse.Namespace):
    from archive.audit import AuditTrail, LocalUser
    from archive.auth.access import SYSTEM
    from archive.catalog import Catalog
    from archive.config import load_settings

    from .curation import Curation

    settings = load_settings(args.config, data_dir=args.data_dir)
    local = _LocalArchive(settings, Catalog.open(settings), AuditTrail(settings.audit, settings.data_dir))
    return Curation(local, SYSTEM, None, LocalUser.current())


def _print(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False) if args.json else text)


def _contributor(value: str, role: str) -> dict[str, Any]:
    """``NAME[;AFFILIATION[;ORCID]]``, e.g. ``"Doe, Jane;Example University;0000-0002-1825-0097"``."""
    name, affiliation, orcid = (value.split(";") + ["", ""])[:3]
    return {"name": name, "affiliation": affiliation or None, "orcid": orcid or None, "role": role}


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.from_json:
        try:
            text = sys.stdin.read() if str(args.from_json) == "-" else Path(args.from_json).read_text()
            body = json.loads(text)
        except (OSError, ValueError) as e:
            raise InvalidRequest(f"--from-json: cannot read a JSON object ({type(e).__name__})") from None
        if not isinstance(body, dict):
            raise InvalidRequest("--from-json: the file must hold a JSON object")
    for name in ("title", "description", "license", "terms_of_use", "search", "collection"):
        if getattr(args, name, None) is not None:
            body[name] = getattr(args, name)
    people = [_contributor(c, "creator") for c in args.creator or []] + \
             [_contributor(c, "contributor") for c in args.contributor or []]
    if people:
        body["contributors"] = people
    if args.keyword:
        body["keywords"] = args.keyword
    if getattr(args, "series", None):
        body["series"] = args.series
    return body


def _uids(args: argparse.Namespace) -> list[str]:
    uids = list(args.series or [])
    if args.from_file:
        uids += [line.strip() for line in Path(args.from_file).read_text().splitlines() if line.strip()]
    return uids


def cmd_create(args: argparse.Namespace) -> int:
    with _curating(args) as curation:
        body = _body(args)
        body["id"] = args.id
        dataset = curation.create(body)
    _print(args, dataset.to_json(), f"dataset {dataset.id} created")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    with _curating(args) as curation:
        dataset = curation.update(args.id, _body(args))
    _print(args, dataset.to_json(), f"dataset {dataset.id} updated")
    return 0


def cmd_series(args: argparse.Namespace) -> int:
    """``add`` or ``remove`` series by hand."""
    with _curating(args) as curation:
        adding = args.dataset_command == "add"
        n = (curation.add_series if adding else curation.remove_series)(args.id, _uids(args))
    _print(args, {"added" if adding else "removed": n},
           f"{n} series {'added to' if adding else 'taken out of'} {args.id}")
    return 0


def cmd_cases(args: argparse.Namespace) -> int:
    """A CSV with a header row: patient_id and any of diagnosis, age_band, sex, anatomic_site."""
    try:
        with open(args.csv, newline="", encoding="utf-8") as f:
            rows = [{k: v for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InvalidRequest(f"{args.csv}: not a readable CSV file ({type(e).__name__})") from None
    with _curating(args) as curation:
        n = curation.set_cases(args.id, rows)
    _print(args, {"cases": n}, f"clinical fields of {n} cases set for {args.id}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    with _curating(args) as curation:
        made = curation.release(args.id)
    c = made.counts
    _print(args, made.to_json(), f"released {made.id} as {made.identifier}: {c['slides']} slides, {c['cases']} cases, "
                                 f"{c['instances']} instances, {c['size']} bytes; manifest {made.manifest_sha256}")
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    from .release import release_id

    with _curating(args) as curation:
        n = curation.withdraw(release_id(args.id, args.version), args.reason, args.series or None)
    what = f"{len(args.series)} series of" if args.series else "the whole of"
    _print(args, {"withdrawn_instances": n}, f"withdrew {what} {args.id}:v{args.version} ({n} instances marked)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import model, release

    with _curating(args) as curation:
        total, found = model.list_datasets(curation.catalog, args.query, limit=args.limit)
        rows = [(d, release.releases(curation.catalog, d.id)) for d in found]
    if args.json:
        _print(args, {"total": total, "datasets": [dict(d.to_json(), releases=[r.to_json() for r in made])
                                                   for d, made in rows]}, "")
        return 0
    for d, made in rows:
        latest = f"v{made[-1].version} {made[-1].status} {made[-1].released_at}" if made else "not released"
        print(f"{d.id}  {latest}  {d.title}")
    print(f"{total} datasets", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from . import metadata, model, release

    with _curating(args) as curation:
        dataset = model.get(curation.catalog, args.id)
        made = release.releases(curation.catalog, args.id)
        added, removed = model.listed_series(curation.catalog, args.id)
        chosen = None
        if args.version:
            chosen = release.load_manifest(curation.catalog, release.release_id(args.id, args.version))
    publisher = curation.archive.settings.datasets.publisher
    if chosen is not None:
        if args.json:
            print(json.dumps(chosen.to_json(), indent=2, ensure_ascii=False))
            return 0
        r = chosen.release
        print(f"{r.id}  {r.identifier}  {r.status}  released {r.released_at} by {r.released_by}")
        print(f"citation: {metadata.citation(r, publisher)}")
        print(f"counts: {json.dumps(r.counts, ensure_ascii=False)}")
        print(f"manifest sha256: {r.manifest_sha256}")
        for item in chosen.items:
            mark = f"  WITHDRAWN ({item.withdrawn_reason})" if item.withdrawn else ""
            print(f"{item.sha256}  {item.size:>12}  {item.sop_instance_uid}{mark}")
        return 0
    if args.json:
        print(json.dumps(dict(dataset.to_json(), added_series=added, removed_series=removed,
                              releases=[r.to_json() for r in made]), indent=2, ensure_ascii=False))
        return 0
    print(f"{dataset.id}: {dataset.title}")
    print(f"licence: {dataset.license}; creators: {'; '.join(c.name for c in dataset.creators)}")
    print(f"chosen by: search={dataset.search or '-'} collection={dataset.collection or '-'} "
          f"+{len(added)} listed -{len(removed)} taken out")
    for r in made:
        print(f"  v{r.version}  {r.status:9}  {r.released_at}  {r.identifier}  {r.counts['slides']} slides")
    return 0


def register(subparsers: Any, common: argparse.ArgumentParser | None = None) -> None:
    if common is None:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--config", type=Path, default=None, help="configuration TOML file")
        common.add_argument("--data-dir", default=None, help="where instances, catalog and keys live")
        common.add_argument("-v", "--verbose", action="store_true", help="log more")
    output = argparse.ArgumentParser(add_help=False, parents=[common])
    output.add_argument("--json", action="store_true", help="print JSON")
    p = subparsers.add_parser("dataset", help="curate datasets and releases (docs/datasets.md)",
                              description="Define datasets of slide series, release them as versioned, "
                                          "citable manifests, withdraw them.")
    sub = p.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")

    fields = argparse.ArgumentParser(add_help=False)
    fields.add_argument("--title")
    fields.add_argument("--description")
    fields.add_argument("--license", help="an SPDX identifier (CC-BY-4.0) or a URL")
    fields.add_argument("--terms-of-use", dest="terms_of_use")
    fields.add_argument("--creator", action="append", metavar="NAME[;AFFILIATION[;ORCID]]",
                        help="an author (repeat for more)")
    fields.add_argument("--contributor", action="append", metavar="NAME[;AFFILIATION[;ORCID]]")
    fields.add_argument("--keyword", action="append")
    fields.add_argument("--search", help="a saved /api/search query string, e.g. 'stain=HE&collection=skin'")
    fields.add_argument("--collection", help="every series of this collection")
    fields.add_argument("--from-json", metavar="FILE", help="the fields as a JSON object ('-': standard input)")

    c = sub.add_parser("create", parents=[output, fields], help="define a dataset")
    c.add_argument("id", help="2-63 characters of a-z, 0-9 and '-'")
    c.add_argument("--series", action="append", help="a Series Instance UID to include (repeat)")
    c.set_defaults(func=cmd_create)
    u = sub.add_parser("update", parents=[output, fields], help="change a dataset's fields")
    u.add_argument("id")
    u.set_defaults(func=cmd_update, series=None)
    for name, text in (("add", "include series by hand"),
                       ("remove", "take series out (also out of what the search chooses)")):
        s = sub.add_parser(name, parents=[output], help=text)
        s.add_argument("id")
        s.add_argument("series", nargs="*", help="Series Instance UIDs")
        s.add_argument("--from-file", help="a file of Series Instance UIDs, one a line")
        s.set_defaults(func=cmd_series)
    k = sub.add_parser("cases", parents=[output], help="set clinical fields per case from a CSV file")
    k.add_argument("id")
    k.add_argument("csv", help="header: patient_id,diagnosis,age_band,sex,anatomic_site")
    k.set_defaults(func=cmd_cases)
    r = sub.add_parser("release", parents=[output], help="freeze the dataset as a new version")
    r.add_argument("id")
    r.set_defaults(func=cmd_release)
    w = sub.add_parser("withdraw", parents=[output], help="withdraw a release, or some of its series")
    w.add_argument("id")
    w.add_argument("version", type=int)
    w.add_argument("--reason", required=True, help="shown on the landing page and in the citation")
    w.add_argument("--series", action="append", help="withdraw only this series (repeat)")
    w.set_defaults(func=cmd_withdraw)
    li = sub.add_parser("list", parents=[output], help="list datasets")
    li.add_argument("--query", help="words to find in titles, descriptions, keywords, names")
    li.add_argument("--limit", type=int, default=1000)
    li.set_defaults(func=cmd_list)
    sh = sub.add_parser("show", parents=[output], help="a dataset, or one release's manifest")
    sh.add_argument("id")
    sh.add_argument("--version", type=int, help="show this release: citation, counts, every instance")
    sh.set_defaults(func=cmd_show)
    for name in EXTENSIONS:
        try:
            module = __import__(name, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub, output)
