"""De-identification on ingest (PS3.15 Annex E) for whole-slide DICOM.

A pure library: the archive's ingest path calls `deidentify(header, policy, vault)`
and stores what comes back; nothing here knows where bytes are stored. See docs/deid.md.
"""
import importlib
from typing import Any

# Exports load on first use (PEP 562): `deid.cli`, which the archive's command line
# imports at start-up, must not pull in highdicom and numpy through this package.
_EXPORTS = {
    "Outcome": "deid.core", "deidentify": "deid.core", "DeidentificationError": "deid.errors",
    "Dropped": "deid.errors", "PolicyError": "deid.errors", "Option": "deid.options",
    "Policies": "deid.policy", "Policy": "deid.policy", "load_policies": "deid.policy",
    "blank_region": "deid.slides", "LinkVault": "deid.vault",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deid' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


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
