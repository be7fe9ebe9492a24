"""Fuzzing the configuration file (issue 9, item 5): a malformed file is a configuration error.

Hypothesis writes TOML files (with tomli-w) that set known keys of every section, nested
tables and arrays of tables included, to values of any type, and unknown keys beside them.
What ``serve`` runs on the file before it starts anything (``load_settings``, then the
``[index]`` and ``[deid]`` loaders) must accept it or raise one of the configuration errors,
which ``slidearchive`` reports as ``configuration error: ...`` with exit status 2. Any other
exception reaches the user as "unexpected TypeError" with no word on what is wrong.
Inputs that found bugs are kept as ``@example`` cases; the last test runs some of them
through the real command line.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("SLIDEARCHIVE_FUZZ_SCALE", "1"))  # as in test_fuzz.py (which builds an app on import)
REPO = Path(__file__).resolve().parent.parent
DEFAULTS = tomllib.loads((REPO / "config" / "default.toml").read_text())

#: Keys of tables the default file does not show, by their path.
NESTED = {
    ("dimse", "remote"): ["ae_title", "host", "port", "tls"],
    ("dimse", "peer"): ["ae_title", "allow", "collections"],
    ("deid", "policies", "basic"): ["options", "key_file", "relink", "broker_public_key", "label", "overview",
                                    "overview_label_area", "identified"],
    ("deid", "sources"): ["ae", "collection"],
    ("audit", "syslog"): ["host", "port", "ca_file", "cert_file", "key_file", "server_name", "retry_seconds"],
    ("auth", "issuer"): ["issuer", "audience", "algorithms", "discovery_url", "collections_claim", "passports"],
    ("auth", "visa_issuer"): ["issuer", "jku", "collections", "roles"],
    ("index",): ["username_env", "password_env", "api_key_env", "index_prefix", "path", "request_timeout",
                 "shards", "replicas", "batch_size", "poll_interval", "qido", "ca_certs"],
    ("storage",): ["upload_concurrency", "frame_cache_mb", "frame_readahead_kb"],
}
#: Tables that are arrays of tables in a valid file.
ARRAYS = {("dimse", "remote"), ("dimse", "peer"), ("auth", "issuer"), ("auth", "visa_issuer")}
PLACES = sorted({(section, key) for section, table in DEFAULTS.items() for key in table
                 if not isinstance(table[key], dict)} | {(*path, key) for path, keys in NESTED.items() for key in keys}
                | {path for path in NESTED if len(path) > 1})
WORDS = ["", " ", "basic", "identified", "default", "store", "query", "retrieve", "read", "write", "delete", "RS256",
         "HS256", "embedded", "elasticsearch", "refuse", "warn", "off", "only", "separate", "1.2", "1.3", "text",
         "json", "debug", "STORESCU", "A" * 17, "bad\\ae", "127.0.0.1", "0.0.0.0", "::1", "localhost", "http://127.0.0.1:1",
         "https://issuer.invalid", "s3://bucket/prefix", "s3://user:pw@bucket", "postgresql://x@127.0.0.1/db",
         "file:///etc/passwd", "../../etc/passwd", "/nonexistent/file.pem", "10.1234", "UPPER-Prefix", "é", "*"]
scalars = st.one_of(st.sampled_from(WORDS), st.text(max_size=12), st.booleans(),
                    st.sampled_from([0, 1, -1, 5, 16, 65535, 65536, 2**31, 2**63 - 1, -(2**63)]), st.integers(),
                    st.sampled_from([0.0, 0.5, -0.5, 1e-9, 1e300, math.inf, -math.inf, math.nan]))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.sampled_from(WORDS[:8]) | st.text(max_size=6), scalars, max_size=3),
                   st.lists(st.dictionaries(st.sampled_from(["ae_title", "host", "port", "issuer", "audience", "jku",
                                                             "collections", "x"]), scalars, max_size=4), max_size=2))


def _put(doc: dict, path: tuple[str, ...], value) -> None:
    """Set ``path`` to ``value``, making the tables (or the first table of an array) on the way."""
    table = doc
    for i, name in enumerate(path[:-1]):
        here = path[: i + 1]
        if here in ARRAYS:
            entries = table.get(name)
            if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
                entries = table[name] = [{}]
            table = entries[0]
        else:
            if not isinstance(table.get(name), dict):
                table[name] = {}
            table = table[name]
    table[path[-1]] = value


@st.composite
def config_files(draw) -> str:
    doc: dict = {}
    # often one section alone: a file with errors everywhere stops at the first section read
    section = draw(st.sampled_from([None, None, *sorted({p[0] for p in PLACES})]))
    places = [p for p in PLACES if section is None or p[0] == section]
    for path in draw(st.lists(st.sampled_from(places), min_size=1, max_size=5)):
        _put(doc, path, draw(values))
    if draw(st.booleans()) and draw(st.booleans()):
        _put(doc, draw(st.sampled_from([("server",), ("dimse",), ("deid",), ("nope",), ("index",)])) + ("unknown_key",),
             draw(scalars))
    return tomli_w.dumps(doc)


def _configuration_error(text: str, tmp: Path) -> Exception | None:
    """What ``serve`` checks before it starts: None when the file is accepted, else the error raised."""
    import deid
    from archive.config import load_settings
    from indexer.config import load_index_config

    config = tmp / "config.toml"
    config.write_text(text)
    try:
        s = load_settings(config, data_dir=str(tmp / "data"))
        load_index_config(s.index, s.data_dir)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        deid.load_policies(s.deid, s.data_dir)
    except Exception as e:  # noqa: BLE001 - what kind it is, is the test
        return e
    return None


@settings(max_examples=max(1, int(400 * SCALE)), derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(text=config_files())
@example(text='[dimse]\nremote = ["VIEWER"]\n')  # found: AttributeError ('str' has no .get)
@example(text="[deid.policies.basic]\noptions = 5\n")  # found: TypeError (int is not iterable)
@example(text='[deid.policies.basic]\nkey_file = " "\n')  # found: FileNotFoundError
def test_malformed_configuration_is_a_configuration_error(tmp_path_factory, text):
    from archive.cli import _is_configuration_error

    error = _configuration_error(text, tmp_path_factory.mktemp("config"))
    event("accepted" if error is None else str(error).split(":")[0][:40])
    if error is not None:
        assert isinstance(error, ValueError) and _is_configuration_error(error), (
            f"{type(error).__name__} ({error}) for:\n{text}")
        assert str(error).strip(), f"an empty message for:\n{text}"


@pytest.mark.parametrize("key", ["identified", "relink"])
def test_a_string_is_not_a_boolean(tmp_path, key):
    """Found while fixing the above: ``identified = "no"`` read as true, so that source's instances
    would have been stored with their patients' names."""
    from deid import PolicyError

    error = _configuration_error(f'[deid.policies.basic]\n{key} = "no"\n', tmp_path)
    assert isinstance(error, PolicyError) and f"{key} must be true or false" in str(error), error


@pytest.mark.parametrize("text", [
    '[dimse]\nremote = ["VIEWER"]\n',
    "[deid.policies.basic]\noptions = 5\n",
    '[deid.policies.basic]\nkey_file = "/nonexistent/deid.key"\n',
])
def test_the_command_line_says_configuration_error(tmp_path, text):
    """The real ``slidearchive serve``: one line naming the problem, exit status 2, nothing started."""
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = subprocess.run([sys.executable, "-m", "archive.cli", "serve", "--config", str(config), "--data-dir",
                             str(tmp_path / "data"), "--http-port", "0", "--dimse-port", "0"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "configuration error" in result.stderr and "Traceback" not in result.stderr, result.stderr
