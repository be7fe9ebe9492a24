"""The [index] table: validation, secrets from environment variables, backend selection."""
from __future__ import annotations

import pytest

from indexer.config import IndexConfigError, load_index_config
from indexer.factory import open_index


def test_defaults_are_the_embedded_backend_in_the_data_dir(tmp_path):
    config = load_index_config({"backend": "embedded", "urls": []}, tmp_path)
    assert config.backend == "embedded" and config.path == tmp_path / "index.sqlite"
    index = open_index(config)
    assert index.name.startswith("embedded:")
    index.close()


def test_elasticsearch_backend_with_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("T_ES_USER", "indexer")
    monkeypatch.setenv("T_ES_PASS", "s3cret")
    config = load_index_config({"backend": "elasticsearch", "urls": ["http://127.0.0.1:9"],
                                "username_env": "T_ES_USER", "password_env": "T_ES_PASS",
                                "index_prefix": "lab-"})
    assert config.credentials() == {"basic_auth": ("indexer", "s3cret")}
    index = open_index(config)
    assert index.alias == "lab-slides"
    index.close()
    monkeypatch.setenv("T_ES_KEY", "abc")
    assert load_index_config({"backend": "elasticsearch", "urls": ["http://x:9200"],
                              "api_key_env": "T_ES_KEY"}).credentials() == {"api_key": "abc"}


@pytest.mark.parametrize("table, word", [
    ({"backend": "solr"}, "backend"),
    ({"backend": "elasticsearch"}, "urls"),
    ({"shards": "2"}, "shards"),
    ({"index_prefix": "Bad Prefix"}, "index_prefix"),
    ({"colour": 1}, "unknown"),
    ({"backend": "elasticsearch", "urls": ["http://x"], "api_key_env": "T_UNSET_VARIABLE"}, "not set"),
])
def test_bad_settings_name_the_field(table, word, monkeypatch):
    monkeypatch.delenv("T_UNSET_VARIABLE", raising=False)
    with pytest.raises(IndexConfigError) as e:
        load_index_config(table).credentials()
    assert word in str(e.value)
