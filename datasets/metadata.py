"""How a release describes itself to catalogues and to people citing it.

- schema.org ``Dataset`` as JSON-LD (what dataset search engines harvest): name,
  description, identifier, url, version, license, creator, publisher,
  datePublished, keywords, distribution and the rest Google's Dataset guide recommends.
- DataCite Metadata Schema 4.5 as JSON (the mandatory Identifier, Creator, Title,
  Publisher, PublicationYear, ResourceType, and the recommended Subject,
  Contributor, Date, RelatedIdentifier, Size, Format, Version, Rights, Description).
- A citation text in DataCite's recommended form:
  ``Creator (PublicationYear): Title. Version. Publisher. Identifier``.

Everything is built from the release's frozen metadata, never from the dataset's
current fields, so a release always describes itself the same way.
"""
from __future__ import annotations

from typing import Any

from .release import Release

DATACITE_SCHEMA = "http://datacite.org/schema/kernel-4"
RESOURCE_TYPE = "Whole-slide microscopy images (DICOM)"
CLINICAL_VARIABLES = ("diagnosis", "age band", "sex", "anatomic site", "species")


def resolvable(identifier: str) -> str:
    """The identifier as a URL when it is a DOI, else as it is (a URN)."""
    return identifier if identifier.startswith("urn:") else f"https://doi.org/{identifier}"


def is_doi(identifier: str) -> bool:
    return identifier.startswith("10.")


def license_url(license: str) -> str | None:
    if license.startswith(("http://", "https://")):
        return license
    if license.startswith("LicenseRef-"):
        return None  # a licence of this archive's own: its text is the terms of use
    return f"https://spdx.org/licenses/{license}.html"


def urls(base: str, release: Release) -> dict[str, str]:
    """Where a release is found: landing page, API record, manifest, metadata documents."""
    api = f"{base}/api/datasets/{release.dataset_id}/releases/{release.version}"
    return {"landing": f"{base}/datasets/{release.dataset_id}/v{release.version}", "api": api,
            "manifest": f"{api}/manifest", "jsonld": f"{api}/jsonld", "datacite": f"{api}/datacite",
            "download": f"{api}/download"}


def _year(release: Release) -> str:
    return release.released_at[:4]


def citation(release: Release, publisher: str) -> str:
    meta = release.metadata
    creators = "; ".join(c["name"] for c in meta["contributors"] if c.get("role", "creator") == "creator")
    text = (f"{creators} ({_year(release)}): {meta['title'].rstrip('.')}. Version {release.version}. "
            f"{publisher}. {resolvable(release.identifier)}")
    if release.withdrawn_at:
        text += f" (withdrawn {release.withdrawn_at[:10]})"
    return text


def _person(c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": "Person" if "," in c["name"] or c.get("orcid") else "Organization",
                           "name": c["name"]}
    if c.get("orcid"):
        out["@id"] = out["identifier"] = f"https://orcid.org/{c['orcid']}"
    if c.get("affiliation"):
        out["affiliation"] = {"@type": "Organization", "name": c["affiliation"]}
    return out


def json_ld(release: Release, base: str, publisher: str, previous: Release | None = None) -> dict[str, Any]:
    """schema.org Dataset (JSON-LD) of one release."""
    meta, counts, where = release.metadata, release.counts, urls(base, release)
    people = meta["contributors"]
    doc: dict[str, Any] = {
        "@context": "https://schema.org/",
        "@type": "Dataset",
        "@id": resolvable(release.identifier),
        "name": meta["title"],
        "description": meta["description"],
        "identifier": resolvable(release.identifier),
        "url": where["landing"],
        "version": str(release.version),
        "datePublished": release.released_at[:10],
        "license": license_url(meta["license"]) or meta["license"],
        "creator": [_person(c) for c in people if c.get("role", "creator") == "creator"],
        "publisher": {"@type": "Organization", "name": publisher, "url": base},
        "keywords": list(meta.get("keywords") or []),
        "measurementTechnique": "Whole slide imaging",
        "variableMeasured": list(CLINICAL_VARIABLES),
        "creditText": citation(release, publisher),
        "includedInDataCatalog": {"@type": "DataCatalog", "name": publisher, "url": f"{base}/datasets"},
        "distribution": [
            {"@type": "DataDownload", "name": "DICOM files (tar)", "encodingFormat": "application/dicom",
             "contentUrl": where["download"], "contentSize": f"{counts['size']} B"},
            {"@type": "DataDownload", "name": "Manifest (SOP Instance UIDs, sizes, SHA-256)",
             "encodingFormat": "application/json", "contentUrl": where["manifest"]},
        ],
        "size": [f"{counts['slides']} slides", f"{counts['cases']} cases", f"{counts['size']} B"],
    }
    contributors = [_person(c) for c in people if c.get("role") == "contributor"]
    if contributors:
        doc["contributor"] = contributors
    if meta.get("terms_of_use"):
        doc["conditionsOfAccess"] = meta["terms_of_use"]
    if previous is not None:
        doc["isBasedOn"] = resolvable(previous.identifier)
    if release.withdrawn_at:
        doc["expires"] = release.withdrawn_at[:10]
    return doc


def _datacite_name(c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c["name"]}
    if "," in c["name"] or c.get("orcid"):
        out["nameType"] = "Personal"
        family, _, given = c["name"].partition(",")
        if given.strip():
            out["familyName"], out["givenName"] = family.strip(), given.strip()
    if c.get("orcid"):
        out["nameIdentifiers"] = [{"nameIdentifier": f"https://orcid.org/{c['orcid']}",
                                   "nameIdentifierScheme": "ORCID", "schemeUri": "https://orcid.org"}]
    if c.get("affiliation"):
        out["affiliation"] = [{"name": c["affiliation"]}]
    return out


def datacite(release: Release, base: str, publisher: str, previous: Release | None = None) -> dict[str, Any]:
    """DataCite Metadata Schema 4.5 JSON of one release (the ``attributes`` of a DataCite REST record)."""
    meta, counts = release.metadata, release.counts
    doc: dict[str, Any] = {}
    if is_doi(release.identifier):
        prefix, _, suffix = release.identifier.partition("/")
        doc.update(doi=release.identifier, prefix=prefix, suffix=suffix)
    else:
        doc["alternateIdentifiers"] = [{"alternateIdentifier": release.identifier, "alternateIdentifierType": "URN"}]
    doc.update({
        "creators": [_datacite_name(c) for c in meta["contributors"] if c.get("role", "creator") == "creator"],
        "titles": [{"title": meta["title"]}],
        "publisher": {"name": publisher},
        "publicationYear": _year(release),
        "types": {"resourceTypeGeneral": "Dataset", "resourceType": RESOURCE_TYPE},
        "schemaVersion": DATACITE_SCHEMA,
        "url": urls(base, release)["landing"],
        "version": str(release.version),
        "subjects": [{"subject": k} for k in meta.get("keywords") or []],
        "dates": [{"date": release.released_at[:10], "dateType": "Issued"}],
        "sizes": [f"{counts['slides']} slides", f"{counts['cases']} cases", f"{counts['instances']} DICOM instances",
                  f"{counts['size']} bytes"],
        "formats": ["application/dicom"],
        "descriptions": [{"description": meta["description"], "descriptionType": "Abstract"}],
    })
    contributors = [dict(_datacite_name(c), contributorType="Researcher")
                    for c in meta["contributors"] if c.get("role") == "contributor"]
    if contributors:
        doc["contributors"] = contributors
    rights: dict[str, Any] = {"rights": meta["license"]}
    url = license_url(meta["license"])
    if url:
        rights["rightsUri"] = url
    if not meta["license"].startswith(("http://", "https://", "LicenseRef-")):
        rights.update(rightsIdentifier=meta["license"], rightsIdentifierScheme="SPDX",
                      schemeUri="https://spdx.org/licenses/")
    doc["rightsList"] = [rights]
    if meta.get("terms_of_use"):
        doc["descriptions"].append({"description": meta["terms_of_use"], "descriptionType": "Other"})
    if previous is not None:
        doc["relatedIdentifiers"] = [{"relatedIdentifier": previous.identifier, "relationType": "IsNewVersionOf",
                                      "relatedIdentifierType": "DOI" if is_doi(previous.identifier) else "URN"}]
    if release.withdrawn_at:
        doc["dates"].append({"date": release.withdrawn_at[:10], "dateType": "Withdrawn",
                             "dateInformation": (release.withdrawn_reason or "")[:200]})
    return doc
