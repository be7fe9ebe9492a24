"""Exceptions the ingest path handles. Messages never carry identifiers."""
from __future__ import annotations


class Dropped(Exception):
    """The instance must not be stored under this policy.

    `reason` names the rule and the policy (e.g. "LABEL image dropped by policy basic"),
    never a name, id or UID from the data set.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PolicyError(ValueError):
    """The [deid] configuration is invalid."""


class DeidentificationError(RuntimeError):
    """De-identification failed on malformed input.

    Raised instead of the underlying parser or value error, whose message could quote
    a value from the data set; the cause is deliberately not chained.
    """
