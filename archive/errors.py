"""The one error table: every failure the archive reports, with its HTTP and DIMSE status.

Entry points never invent statuses: DICOMweb turns an ArchiveError into
``http_status`` (and, in STOW-RS responses, ``failure_reason``), the DIMSE SCP
returns ``dimse_status``. Messages must never carry patient identifiers: they
name what was wrong (an attribute keyword, a limit), not the value.
"""
from __future__ import annotations


class ArchiveError(Exception):
    """Base class. Subclasses set the statuses as class attributes."""

    http_status: int = 500
    dimse_status: int = 0xC000  # Cannot understand / processing failure
    #: STOW-RS FailureReason (PS3.18 Annex I), a DIMSE status code.
    failure_reason: int = 0x0110  # Processing failure
    title: str = "Processing failure"
    #: The instance the failure is about, as it would have been stored (set by ingest when known).
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ArchiveError):
    """A malformed request: bad query key, bad UID in a path, bad frame list."""

    http_status = 400
    dimse_status = 0xC000
    failure_reason = 0xC000
    title = "Bad request"


class InvalidDataset(ArchiveError):
    """The bytes are not a DICOM data set the archive can understand."""

    http_status = 400
    dimse_status = 0xC000
    failure_reason = 0xC000
    title = "Cannot understand"


class DatasetDoesNotMatchSOPClass(ArchiveError):
    """Required attributes are missing or malformed for the SOP class."""

    http_status = 400
    dimse_status = 0xA900
    failure_reason = 0xA900
    title = "Data set does not match SOP class"


class SOPClassNotSupported(ArchiveError):
    """The SOP class is not a storage SOP class the archive accepts."""

    http_status = 400
    dimse_status = 0x0122
    failure_reason = 0x0122
    title = "SOP class not supported"


class DuplicateInstance(ArchiveError):
    """A different instance is already stored under the same SOP Instance UID."""

    http_status = 409
    dimse_status = 0xA900
    failure_reason = 0x0111  # Duplicate SOP instance
    title = "Duplicate SOP instance"


class ReferenceNotFound(ArchiveError):
    """A result object references a slide the archive does not hold."""

    http_status = 409
    dimse_status = 0xA900
    failure_reason = 0xA900
    title = "Referenced instance not found"


class OutOfResources(ArchiveError):
    """Disk full or another resource exhausted: nothing was stored."""

    http_status = 507
    dimse_status = 0xA700
    failure_reason = 0xA700
    title = "Out of resources"


class Busy(ArchiveError):
    """As much work of this kind is running as the archive allows at once (e.g. slide conversions); retry later."""

    http_status = 503
    dimse_status = 0xA700
    failure_reason = 0xA700
    title = "Busy"

class CatalogUnavailable(ArchiveError):
    """The catalog database cannot be reached (restarting, failing over): nothing was changed; retry."""

    http_status = 503
    dimse_status = 0xA700
    failure_reason = 0xA700
    title = "Catalog unavailable"


class StorageUnavailable(ArchiveError):
    """The object store (S3) did not answer, answered 5xx, or its bucket is gone: nothing was stored
    or read; the same request succeeds once it is back."""

    http_status = 503
    dimse_status = 0xA700
    failure_reason = 0xA700
    title = "Storage unavailable"


class NotAuthorized(ArchiveError):
    """The calling peer may not use this service (association policy)."""

    http_status = 403
    dimse_status = 0x0124  # Refused: not authorized
    failure_reason = 0x0124
    title = "Not authorized"


class ShuttingDown(ArchiveError):
    """The server is stopping: the request came in during the drain, or outlasted ``stop_timeout``."""

    http_status = 503
    dimse_status = 0xA700
    failure_reason = 0x0110
    title = "Service unavailable"


class NotFound(ArchiveError):
    http_status = 404
    dimse_status = 0xC000
    title = "Not found"


class Conflict(InvalidRequest):
    """The request contradicts what is stored (a dataset id taken, a release of an empty dataset)."""

    http_status = 409
    title = "Conflict"


class SeriesOfAnotherStudy(Conflict):
    """The instance names a Series Instance UID already held under a different Study Instance UID:
    stored, it would be filed where its own header says it is not."""

    title = "Series of another study"


class NotAcceptable(ArchiveError):
    """The requested media type or transfer syntax cannot be produced."""

    http_status = 406
    title = "Not acceptable"


class UnsupportedMediaType(ArchiveError):
    http_status = 415
    failure_reason = 0xC000
    title = "Unsupported media type"


class RangeNotSatisfiable(ArchiveError):
    http_status = 416
    title = "Range not satisfiable"


class NotASlide(InvalidDataset):
    """A file given to import that is neither DICOM nor a whole-slide image any reader here opens."""

    title = "Not a slide"


class UnsupportedFormat(UnsupportedMediaType):
    """A vendor slide format this archive has no reader for (docs/import.md lists the formats)."""

    title = "Unsupported slide format"


class InvalidManifest(InvalidRequest):
    """A sidecar manifest row that cannot be used: a missing file, an unknown column, a malformed code."""

    title = "Invalid manifest"


class ConversionRefused(InvalidDataset):
    """A vendor file whose pyramid cannot become whole-slide DICOM as asked (e.g. a level too large for one instance)."""

    title = "Conversion refused"

#: Warning statuses (PS3.4 Annex B / PS3.18 WarningReason).
WARNING_COERCED = 0xB000  # Coercion of data elements (de-identification rewrote them)
WARNING_ELEMENTS_DISCARDED = 0xB006  # Accepted but not kept (e.g. a LABEL image dropped by policy)
WARNING_REFERENCE = 0xB007  # Data set does not match SOP class: a result whose slide is absent, kept by policy
