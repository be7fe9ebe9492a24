"""Attribute types (1/2/3) per SOP class, from the IOD/module tables highdicom ships.

Compound actions in Table E.1-1 (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) depend on the
attribute's type in the IOD at hand; highdicom packages the standard's
SOP class -> IOD -> module -> attribute tables as JSON, which we read here once per
SOP class, straight from the files: importing highdicom (for its loaders) and keeping
its parsed tables cached cost every ingesting process about 90 MB of resident memory
(the module table alone is 22 MB of JSON); only the modules of the IOD at hand are
parsed and only the small per-class result is kept.
Conditional types count as their unconditional type (1C as 1, 2C as 2): we cannot
evaluate the condition cheaply, and assuming it holds keeps the result valid.
"""
from __future__ import annotations

import importlib.util
import json
import mmap
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

_RANK = {"1": 1, "1C": 1, "2": 2, "2C": 2, "3": 3}


@dataclass(frozen=True)
class IodTypes:
    """Types of attributes in one IOD, by (sequence path, keyword) and by keyword alone."""

    iod: str | None
    by_path: dict[tuple[str, ...], int]
    by_keyword: dict[str, int]

    def type_of(self, path: tuple[str, ...], keyword: str) -> int | None:
        """1, 2 or 3; 3 when the IOD is known but lacks the attribute; None if the IOD is unknown.

        The exact nesting path is tried first. The highdicom tables do not spell out
        every macro at every depth (e.g. per-frame functional groups, content items), so
        a keyword found elsewhere in the IOD gives its strictest type there instead.
        """
        if self.iod is None:
            return None
        found = self.by_path.get(path + (keyword,))
        if found is not None:
            return found
        return self.by_keyword.get(keyword, 3)


def _standard_file(name: str) -> Path:
    """One of highdicom's tables of the standard (``_standard/<name>.json``), found without importing highdicom."""
    spec = importlib.util.find_spec("highdicom")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("highdicom is not installed (its tables of the standard are needed)")
    return Path(next(iter(spec.submodule_search_locations))) / "_standard" / f"{name}.json"


def _standard_table(name: str) -> Any:
    return json.loads(_standard_file(name).read_bytes())


def _module_attributes(keys: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The attribute lists of these modules only, from the 22 MB module table.

    The file is indented JSON with one top-level key per module, each module's list
    running from ``\\n  "key": [`` to the next ``\\n  ]``; one scan finds them and
    only the wanted slices are parsed (a few MB of memory, against 67 MB for the whole
    table). Should the layout ever differ, the whole table is parsed instead.
    """
    path = _standard_file("module_attribute_map")
    found: dict[str, list[dict[str, Any]]] = {}
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        starts = {m.group(1).decode(): m.end() - 1 for m in _MODULE_KEY.finditer(data)}
        try:
            for key in keys:
                if key not in starts:
                    raise ValueError(key)
                begin = starts[key]
                found[key] = json.loads(data[begin:data.find(b"\n  ]", begin) + 4])
            return found
        except ValueError:
            pass
    table = _standard_table("module_attribute_map")
    return {key: table[key] for key in keys if key in table}


_MODULE_KEY = re.compile(rb'\n  "([^"\n]+)": \[')


@lru_cache(maxsize=64)
def iod_types(sop_class_uid: str) -> IodTypes:
    """Build (and cache) the type lookup for a SOP class; the big tables are dropped afterwards."""
    iod = _standard_table("sop_class_iod_map").get(str(sop_class_uid))
    if iod is None:
        return IodTypes(None, {}, {})
    iod_modules = _standard_table("iod_module_map").get(iod, [])
    modules = _module_attributes([module["key"] for module in iod_modules])
    by_path: dict[tuple[str, ...], int] = {}
    by_keyword: dict[str, int] = {}
    for module in iod_modules:
        for attr in modules.get(module["key"], []):
            rank = _RANK.get(attr["type"], 3)
            key = tuple(attr["path"]) + (attr["keyword"],)
            by_path[key] = min(rank, by_path.get(key, 3))
            kw = attr["keyword"]
            by_keyword[kw] = min(rank, by_keyword.get(kw, 3))
    return IodTypes(iod, by_path, by_keyword)
