"""Which attributes live at which level, which can be matched, and what each level returns.

One table shared by QIDO-RS and C-FIND. A matchable key names its catalog
column; everything else an instance carries is kept as DICOM JSON per level and
returned through ``includefield``.
"""
from __future__ import annotations

import dataclasses

from pydicom.datadict import keyword_for_tag, tag_for_keyword


@dataclasses.dataclass(frozen=True)
class Key:
    keyword: str
    level: str  # patient | study | series | instance
    column: str
    vr: str
    multi: bool = False  # stored backslash-joined; a value matches any of them


_KEYS = [
    Key("PatientName", "patient", "patient_name", "PN"),
    Key("PatientID", "patient", "patient_id", "LO"),
    Key("IssuerOfPatientID", "patient", "issuer_of_patient_id", "LO"),
    Key("PatientBirthDate", "patient", "patient_birth_date", "DA"),
    Key("PatientSex", "patient", "patient_sex", "CS"),
    Key("StudyInstanceUID", "study", "study_instance_uid", "UI"),
    Key("StudyDate", "study", "study_date", "DA"),
    Key("StudyTime", "study", "study_time", "TM"),
    Key("AccessionNumber", "study", "accession_number", "SH"),
    Key("StudyID", "study", "study_id", "SH"),
    Key("ReferringPhysicianName", "study", "referring_physician_name", "PN"),
    Key("StudyDescription", "study", "study_description", "LO"),
    Key("ModalitiesInStudy", "study", "modalities_in_study", "CS", multi=True),
    Key("SeriesInstanceUID", "series", "series_instance_uid", "UI"),
    Key("Modality", "series", "modality", "CS"),
    Key("SeriesNumber", "series", "series_number", "IS"),
    Key("SeriesDescription", "series", "series_description", "LO"),
    Key("SeriesDate", "series", "series_date", "DA"),
    Key("SeriesTime", "series", "series_time", "TM"),
    Key("PerformedProcedureStepStartDate", "series", "pps_start_date", "DA"),
    Key("PerformedProcedureStepStartTime", "series", "pps_start_time", "TM"),
    Key("BodyPartExamined", "series", "body_part_examined", "CS"),
    Key("SOPInstanceUID", "instance", "sop_instance_uid", "UI"),
    Key("SOPClassUID", "instance", "sop_class_uid", "UI"),
    Key("InstanceNumber", "instance", "instance_number", "IS"),
    Key("ImageType", "instance", "image_type", "CS", multi=True),
    Key("ContainerIdentifier", "instance", "container_identifier", "LO"),
    Key("NumberOfFrames", "instance", "number_of_frames", "IS"),
    Key("Rows", "instance", "rows", "US"),
    Key("Columns", "instance", "columns", "US"),
    Key("TotalPixelMatrixColumns", "instance", "total_pixel_matrix_columns", "UL"),
    Key("TotalPixelMatrixRows", "instance", "total_pixel_matrix_rows", "UL"),
    Key("ConcatenationUID", "instance", "concatenation_uid", "UI"),
    Key("InConcatenationNumber", "instance", "in_concatenation_number", "US"),
    Key("ConcatenationFrameOffsetNumber", "instance", "concatenation_frame_offset", "UL"),
    Key("ContentDate", "instance", "content_date", "DA"),
    Key("ContentTime", "instance", "content_time", "TM"),
]
KEYS: dict[str, Key] = {k.keyword: k for k in _KEYS}
LEVELS = ("patient", "study", "series", "instance")

#: Top-level attributes kept in the study row's JSON (Patient and General Study modules).
STUDY_ATTRIBUTES = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge", "PatientSize", "PatientWeight",
    "OtherPatientIDsSequence", "EthnicGroup", "PatientComments", "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence",
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID", "ClinicalTrialTimePointID",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "StudyID", "ReferringPhysicianName", "StudyDescription", "ProcedureCodeSequence", "TimezoneOffsetFromUTC",
    "SpecificCharacterSet", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
})
#: Top-level attributes kept in the series row's JSON (General Series, Equipment, Specimen).
SERIES_ATTRIBUTES = frozenset({
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "BodyPartExamined", "Laterality",
    "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions", "InstitutionName",
    "StationName", "FrameOfReferenceUID", "PositionReferenceIndicator", "ContainerIdentifier",
    "ContainerTypeCodeSequence", "SpecimenDescriptionSequence", "RequestAttributesSequence",
    "SpecificCharacterSet", "TimezoneOffsetFromUTC",
})
#: Top-level attributes too large for QIDO rows; served only by WADO-RS metadata.
EXCLUDED_FROM_ROWS = frozenset({"PerFrameFunctionalGroupsSequence", "PixelData", "ExtendedOffsetTable",
                                "ExtendedOffsetTableLengths", "AnnotationGroupSequence"})

#: PS3.18 Table 10.6.3-3/4/5 return attributes, plus what a slide viewer needs to pick a level.
DEFAULT_RETURN = {
    "study": ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
              "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "series": ("SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
               "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
               "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "RequestAttributesSequence",
               "ContainerIdentifier", "Manufacturer", "ManufacturerModelName"),
    "instance": ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
                 "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
                 "NumberOfFrames", "ImageType", "TotalPixelMatrixColumns", "TotalPixelMatrixRows",
                 "ContainerIdentifier", "SharedFunctionalGroupsSequence", "DimensionOrganizationType",
                 "ConcatenationUID", "InConcatenationNumber", "ConcatenationFrameOffsetNumber",
                 "TotalPixelMatrixOriginSequence", "ImageOrientationSlide", "PixelSpacing",
                 "PhotometricInterpretation", "SamplesPerPixel"),
}


def keyword_of(name: str) -> str | None:
    """Accept a keyword (``PatientID``) or a tag (``00100020``); None if neither.

    The tag of a repeating-group element (overlays 60xx, curves 50xx) stays a tag: its keyword
    (``OverlayRows``) names no one group, and maps back to no tag."""
    if len(name) == 8:
        try:
            tag = int(name, 16)
        except ValueError:
            pass
        else:
            keyword = keyword_for_tag(tag)
            if not keyword:
                return None
            return keyword if tag_for_keyword(keyword) == tag else f"{tag:08X}"
    return name if tag_for_keyword(name) is not None else None


def tag_hex(name: str) -> str:
    """The tag (``00100020``) of a keyword, or of a tag ``keyword_of`` kept as a tag."""
    tag = tag_for_keyword(name)
    if tag is not None:
        return f"{tag:08X}"
    if len(name) == 8 and all(c in "0123456789ABCDEF" for c in name):
        return name
    raise ValueError(f"not a DICOM keyword or tag: {name[:64]!r}")
