"""Curators' operations, for the API and the CLI alike: who may, and the audit record of each.

A curator is an administrator or a principal with the role ``curator`` on some
collection; what they may put in a dataset is limited to those collections (the
catalog's ``scope`` with that role). Every operation is recorded in the audit
trail, refused ones included (outcome 4, with the reason), and a release or
withdrawal also as a change of security attributes: it changes which studies
the release's collection (and so its grants) reaches.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from archive.auth.access import Principal
from archive.errors import ArchiveError, NotAuthorized

from . import clinical, model, release

CURATOR = "curator"


def may_curate(principal: Principal) -> bool:
    return principal.admin or principal.can_any(CURATOR)


class Curation:
    """Bound to one archive: its catalog, audit trail and settings; ``remote`` is the caller's address."""

    def __init__(self, archive, principal: Principal, remote: str | None = None, who: Any = None):
        self.archive = archive
        self.catalog = archive.catalog
        self.principal = principal
        self.remote = remote
        self.who = who if who is not None else principal  # the audit trail's user (the CLI's local operator)

    # --- the audit record around each operation ------------------------------------------

    def _run(self, action: str, what: str, fn: Callable[[], Any], event: str = "DICOMInstancesAccessed",
             code: str = "U") -> Any:
        if not may_curate(self.principal):
            self._record(event, code, f"{action} {what}: refused, not a curator", 4)
            raise NotAuthorized("curating datasets needs the curator role (or admin)")
        try:
            result = fn()
        except ArchiveError as e:
            self._record(event, code, f"{action} {what}: refused, {e.message}", 4)
            raise
        return result

    def _record(self, event: str, code: str, description: str, outcome: int = 0, **fields) -> None:
        detail: dict[str, Any] = {"description": description[:500]}
        if event == "DICOMInstancesAccessed":
            detail["action"] = code
        else:
            detail["type"] = "Object Security Attributes Changed"
        self.archive.audit.record(event, principal=self.who, outcome=outcome, remote=self.remote, detail=detail,
                                  **fields)

    @property
    def subject(self) -> str:
        return str(getattr(self.who, "subject", "unknown"))

    # --- definitions ---------------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> model.Dataset:
        what = f"dataset {str(body.get('id'))[:64]}"
        dataset = self._run("create", what, lambda: model.create(self.catalog, body, self.subject, self.principal),
                            code="C")
        self._record("DICOMInstancesAccessed", "C", f"create {what}")
        return dataset

    def update(self, dataset_id: str, body: Mapping[str, Any]) -> model.Dataset:
        dataset = self._run("update", f"dataset {dataset_id}",
                            lambda: model.update(self.catalog, dataset_id, body, self.principal))
        self._record("DICOMInstancesAccessed", "U", f"update dataset {dataset_id}: {', '.join(sorted(body))[:200]}")
        return dataset

    def add_series(self, dataset_id: str, uids: Iterable[str]) -> int:
        return self._change_series(dataset_id, list(uids), True)

    def remove_series(self, dataset_id: str, uids: Iterable[str]) -> int:
        return self._change_series(dataset_id, list(uids), False)

    def _change_series(self, dataset_id: str, uids: list[str], adding: bool) -> int:
        if adding:
            n = self._run("add series to", f"dataset {dataset_id}",
                          lambda: model.add_series(self.catalog, dataset_id, uids, self.principal))
        else:
            n = self._run("remove series from", f"dataset {dataset_id}",
                          lambda: model.remove_series(self.catalog, dataset_id, uids))
        self._record("DICOMInstancesAccessed", "U", f"dataset {dataset_id}: {n} series {'added' if adding else 'taken out'}")
        return n

    def set_cases(self, dataset_id: str, rows: list[Mapping[str, Any]]) -> int:
        n = self._run("set case fields of", f"dataset {dataset_id}",
                      lambda: model.set_cases(self.catalog, dataset_id, rows))
        self._record("DICOMInstancesAccessed", "U", f"dataset {dataset_id}: clinical fields of {n} cases set")
        return n

    # --- releases ------------------------------------------------------------------------

    def _open_index(self):
        from indexer.factory import from_settings

        settings = self.archive.settings
        return from_settings(settings.index, settings.data_dir)[1]

    def release(self, dataset_id: str) -> release.Release:
        settings = self.archive.settings
        made = self._run("release", f"dataset {dataset_id}", lambda: release.freeze(
            self.catalog, dataset_id, principal=self.principal, released_by=self.subject,
            key=clinical.case_key(settings.data_dir, self.catalog), open_index=self._open_index,
            doi_prefix=settings.datasets.doi_prefix), code="C")
        self._record("DICOMInstancesAccessed", "C",
                     f"release {made.id} ({made.identifier}): {made.counts['instances']} instances, "
                     f"manifest {made.manifest_sha256}")
        self._record("SecurityAlert", "U", f"release {made.id}: {made.counts['studies']} studies joined "
                                           f"collection {made.collection}")
        return made

    def withdraw(self, rid: str, reason: str, series: list[str] | None = None) -> int:
        n = self._run("withdraw", f"release {rid[:80]}", lambda: release.withdraw(self.catalog, rid, reason, series),
                      code="D")
        scope = "the whole release" if series is None else f"{len(series)} series"
        self._record("DICOMInstancesAccessed", "D", f"withdraw {scope} of {rid}: {n} instances marked; {reason}")
        self._record("SecurityAlert", "U", f"release {rid}: withdrawn items left collection {release.collection_name(rid)}")
        return n
