"""Ingest.warm_up de-identifies a made-up header at start: it loads the rule table and the
first-use paths, and changes nothing an instance stored afterwards gets."""
from __future__ import annotations

from archive.ingest import Ingest
from deid import seqcache
from deid.policy import Policies
from deid.table import load_table
from test_deid_seqcache import FILES, POLICIES, stored_bytes


def test_warm_up_loads_the_rule_table_and_changes_no_stored_byte(tmp_path):
    assert FILES
    seqcache.CACHE.clear()
    cold = {(name, f.name): stored_bytes(f, policy, tmp_path / "out.dcm")
            for name, policy in POLICIES.items() for f in FILES}
    seqcache.CACHE.clear()
    load_table.cache_clear()
    Ingest(None, None, Policies({"basic": POLICIES["basic"]})).warm_up()
    assert load_table.cache_info().currsize == 1
    warm = {(name, f.name): stored_bytes(f, policy, tmp_path / "out.dcm")
            for name, policy in POLICIES.items() for f in FILES}
    seqcache.CACHE.clear()
    assert warm == cold
