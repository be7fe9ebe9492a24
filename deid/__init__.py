"""De-identification on ingest (PS3.15 Annex E) for whole-slide DICOM.

A pure library: the archive's ingest path calls `deidentify(header, policy, vault)`
and stores what comes back; nothing here knows where bytes are stored. See docs/deid.md.
"""
from deid.core import Outcome, deidentify
from deid.errors import DeidentificationError, Dropped, PolicyError
from deid.options import Option
from deid.policy import Policies, Policy, load_policies
from deid.slides import blank_region
from deid.vault import LinkVault

__all__ = [
    "DeidentificationError",
    "Dropped",
    "LinkVault",
    "Option",
    "Outcome",
    "Policies",
    "Policy",
    "PolicyError",
    "blank_region",
    "deidentify",
    "load_policies",
]
