"""The per-instance shortcuts of the de-identification and header write build what pydicom's
own ways build: the same elements in the same tables, the same values read."""
from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from archive.dicomfile import read_header
from archive.encoding import mark_unchanged
from deid import Policy, deidentify, seqcache
from test_deid_seqcache import FILES, POLICIES
from test_deid_trailing import COEFFICIENTS_SDVN, make_input
from test_headerwrite import with_private_and_undefined_lengths


def _rebuilt(ds: Dataset) -> Dataset:
    """``ds`` built again through Dataset.add, element by element."""
    again = Dataset()
    again.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    for elem in ds._dict.values():
        again.add(elem)
    return again


def test_walked_data_sets_hold_what_dataset_add_would_put_there(tmp_path: Path):
    for path in FILES:
        variant = with_private_and_undefined_lengths(path, tmp_path / f"v-{path.name}")
        for policy in POLICIES.values():
            seqcache.CACHE.clear()
            out = deidentify(read_header(variant).dataset, policy).dataset
            again = _rebuilt(out)
            assert all(type(tag) is BaseTag for tag in out._dict)
            assert list(out._dict.items()) == list(again._dict.items()), (path.name, policy.name)
            for tag, elem in out._dict.items():
                assert getattr(elem, "private_creator", None) == getattr(again._dict[tag], "private_creator", None)
    seqcache.CACHE.clear()


def test_mark_unchanged_reads_a_deferred_value_as_dataset_elements_did(tmp_path: Path):
    big = bytes(range(256)) * 1024
    header = read_header(make_input(tmp_path, "jpeg-eot", padding=64, kept=big))
    ds = header.complete()
    assert ds.get_item(COEFFICIENTS_SDVN, keep_deferred=True).value is None
    mark_unchanged(ds)
    assert ds.get_item(COEFFICIENTS_SDVN, keep_deferred=True).value == big
    out = deidentify(read_header(FILES[0]).dataset, Policy(name="basic", key=b"k" * 32)).dataset
    out.ContentSequence = [Dataset()]
    out.ContentSequence[0].set_original_encoding(False, True, ["iso8859"])
    mark_unchanged(out)
    assert out.ContentSequence[0].original_character_set == out.ContentSequence[0]._character_set
