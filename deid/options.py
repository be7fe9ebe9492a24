"""The PS3.15 Annex E profile options, with their policy names and CID 7050 codes.

One place maps the three names an option has (the policy file's, the table column's,
the coded concept's) so that the rest of the package never spells them twice.
"""
from __future__ import annotations

from enum import Enum


class Option(Enum):
    """An Annex E option: value = (policy name, Table E.1-1 column or None, DCM code, meaning)."""

    CLEAN_PIXEL_DATA = ("clean_pixel_data", None, "113101", "Clean Pixel Data Option")
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = (
        "clean_recognizable_visual_features", None, "113102",
        "Clean Recognizable Visual Features Option")
    CLEAN_GRAPHICS = ("clean_graphics", "cleanGraphOpt", "113103", "Clean Graphics Option")
    CLEAN_STRUCTURED_CONTENT = (
        "clean_structured_content", "cleanStructContOpt", "113104",
        "Clean Structured Content Option")
    CLEAN_DESCRIPTORS = ("clean_descriptors", "cleanDescOpt", "113105", "Clean Descriptors Option")
    RETAIN_LONGITUDINAL_FULL_DATES = (
        "retain_longitudinal_full_dates", "rtnLongFullDatesOpt", "113106",
        "Retain Longitudinal Temporal Information Full Dates Option")
    RETAIN_LONGITUDINAL_MODIFIED_DATES = (
        "retain_longitudinal_modified", "rtnLongModifDatesOpt", "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option")
    RETAIN_PATIENT_CHARACTERISTICS = (
        "retain_patient_characteristics", "rtnPatCharsOpt", "113108",
        "Retain Patient Characteristics Option")
    RETAIN_DEVICE_IDENTITY = (
        "retain_device_identity", "rtnDevIdOpt", "113109", "Retain Device Identity Option")
    RETAIN_UIDS = ("retain_uids", "rtnUIDsOpt", "113110", "Retain UIDs Option")
    RETAIN_SAFE_PRIVATE = ("retain_safe_private", "rtnSafePrivOpt", "113111", "Retain Safe Private Option")
    RETAIN_INSTITUTION_IDENTITY = (
        "retain_institution_identity", "rtnInstIdOpt", "113112",
        "Retain Institution Identity Option")

    @property
    def policy_name(self) -> str:
        return self.value[0]

    @property
    def column(self) -> str | None:
        return self.value[1]

    @property
    def code(self) -> str:
        return self.value[2]

    @property
    def meaning(self) -> str:
        return self.value[3]

    @classmethod
    def from_name(cls, name: str) -> "Option":
        """Parse a policy name; a few long spellings are accepted as aliases."""
        key = name.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        for opt in cls:
            if opt.policy_name == key:
                return opt
        raise ValueError(f"unknown de-identification option {name!r}")


_ALIASES = {
    "retain_longitudinal_modified_dates": "retain_longitudinal_modified",
    "retain_longitudinal_full": "retain_longitudinal_full_dates",
    "retain_longitudinal": "retain_longitudinal_full_dates",
    "retain_device_id": "retain_device_identity",
    "retain_institution_id": "retain_institution_identity",
}

BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
