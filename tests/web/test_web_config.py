"""[web]: the login the pages offer, and its configuration mistakes named."""
from __future__ import annotations

import pytest

from archive.config import ConfigError, load_settings

ISSUER = '[[auth.issuer]]\nissuer = "https://idp.example/realms/p"\naudience = ["slidearchive", "other"]\n'


def settings(tmp_path, text: str):
    path = tmp_path / "web.toml"
    path.write_text(text)
    return load_settings(path, data_dir=str(tmp_path / "data"))


def test_no_issuer_no_login(tmp_path):
    s = settings(tmp_path, "")
    assert s.web.login(s.auth) is None


def test_the_first_issuer_and_its_first_audience_by_default(tmp_path):
    s = settings(tmp_path, ISSUER)
    assert s.web.login(s.auth) == {"issuer": "https://idp.example/realms/p", "client_id": "slidearchive",
                                   "scope": "openid"}


def test_a_named_issuer_client_and_scope(tmp_path):
    s = settings(tmp_path, ISSUER + '[[auth.issuer]]\nissuer = "https://login.example/"\naudience = ["b"]\n'
                 '[web]\nlogin_issuer = "https://login.example/"\nclient_id = "slidearchive-web"\n'
                 'scope = "openid collections"\n')
    assert s.web.login(s.auth) == {"issuer": "https://login.example", "client_id": "slidearchive-web",
                                   "scope": "openid collections"}


@pytest.mark.parametrize("text, message", [
    ('[web]\nlogin_issuer = "https://elsewhere.example"\n', "not one of the \\[\\[auth.issuer\\]\\] entries"),
    ('[web]\nlogin_issuer = "elsewhere"\n', "is not an http\\(s\\) URL"),
    ('[web]\nscope = ""\n', "scope must be space-separated"),
    ('[web]\nscope = "openid \\"x\\""\n', "scope must be space-separated"),
    ('[web]\nclient = "x"\n', "unknown keys: client"),
    ('[web]\nclient_id = 3\n', "client_id must be str"),
])
def test_web_configuration_mistakes_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, ISSUER + text)
