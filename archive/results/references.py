"""Which source images a result names: read by the ingest checks and by the result links alike."""
from __future__ import annotations

from pydicom.dataset import Dataset

from archive.results import measurement_reports


def referenced_instances(ds: Dataset) -> list[tuple[str | None, str]]:
    """(series UID or None, SOP Instance UID) of every source image the result names."""
    out: list[tuple[str | None, str]] = []
    for series in ds.get("ReferencedSeriesSequence", []):
        for inst in series.get("ReferencedInstanceSequence", []):
            out.append((series.get("SeriesInstanceUID"), inst.get("ReferencedSOPInstanceUID")))
    for keyword in ("ReferencedImageSequence", "SourceImageSequence"):
        for inst in ds.get(keyword, []):
            out.append((None, inst.get("ReferencedSOPInstanceUID")))
    for study in ds.get("StudiesContainingOtherReferencedInstancesSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for inst in series.get("ReferencedInstanceSequence", []):
                out.append((series.get("SeriesInstanceUID"), inst.get("ReferencedSOPInstanceUID")))
    out.extend(measurement_reports.evidence(ds))
    by_sop: dict[str, str | None] = {}
    for series, sop in out:
        if sop:
            by_sop[str(sop)] = by_sop.get(str(sop)) or (str(series) if series else None)
    return [(series, sop) for sop, series in by_sop.items()]
