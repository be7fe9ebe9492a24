"""Keep pydicom's writer copying unparsed elements as they were read.

pydicom re-encodes every element of a data set whose original character set
differs from its current one, and sequence items read from a file carry the set as
a list (``['iso8859']``) where the current one is a string (``'iso8859'``): the same
set, yet every item of every sequence was decoded on write (about 40% of the CPU of
storing a small instance). ``mark_unchanged`` clears only that difference in form; a
real change of character set still re-encodes. Used before writing a stored header
(archive.ingest) and before encoding a de-identified sequence (deid.seqcache), so
both write the same bytes.

``value_at`` reads an element's value by tag, for the hot paths that would otherwise pay
pydicom's keyword lookup and ``Dataset.__getattr__`` per attribute (ingest, deid).
"""
from __future__ import annotations

from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset


def _charsets(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def mark_unchanged(ds: Dataset) -> None:
    """Mark ``ds`` and the items of its parsed sequences as encoded the way they were read."""
    read_as = ds.original_character_set
    current = ds._character_set
    if read_as != current and _charsets(read_as) == _charsets(current) and None not in ds.original_encoding:
        ds.set_original_encoding(*ds.original_encoding, current)
    # The element table itself, not Dataset.elements(): that sorts the tags and converts each
    # one (a Python call per element); only a deferred value needs reading, as it would there.
    for tag, elem in list(ds._dict.items()):
        if isinstance(elem, RawDataElement):
            if elem.value is not None:
                continue
            elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement) and elem.VR == "SQ":
            for item in elem.value:
                mark_unchanged(item)


def value_at(ds: Dataset, tag: int, default: Any = None) -> Any:
    """``ds.get(keyword, default)`` by tag: the element's value (a raw one converted, as get does)."""
    return ds[tag].value if tag in ds._dict else default
