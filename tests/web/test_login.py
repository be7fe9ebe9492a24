"""Logging in to the web app with OpenID Connect (authorization code + PKCE) in Debian's Chromium,
against a real mock-oauth2-server with its interactive login form; the search then shows only the
collections the token grants, and every request the page makes carries the token."""
from __future__ import annotations

import json

import pydicom
import pytest

from conftest import IDENTIFIED, Server
from harness import admin_key, chromium, page  # noqa: F401  (the browser fixtures)
from oidc_providers import MockOAuth2
from slides import SlideSpec, make_slide
from test_datasets_api import stow
from test_search_page import relabel, wait_results

CLIENT = "slidearchive-web"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory):
    server = MockOAuth2(tmp_path_factory.mktemp("oidc-web"), [], interactive=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory, issuer):
    config = IDENTIFIED + f'\n[auth]\nenabled = true\n[[auth.issuer]]\nissuer = "{issuer.issuer("web")}"\n' \
                          f'audience = ["{CLIENT}"]\n'
    server = Server(tmp_path_factory.mktemp("login"), config, dimse=False)
    server.admin = admin_key(server)
    server.start()
    teaching = make_slide(tmp_path_factory.mktemp("t"), SlideSpec(width=512, height=512, seed=51, label=False))
    research = relabel(make_slide(tmp_path_factory.mktemp("r"), SlideSpec(width=512, height=512, seed=52, label=False,
                                                                          patient_id="PAT-0052", accession="ACC-52")),
                       ("41216001", "SCT", "Prostate"), "Prostate needle biopsy")
    stow(server, teaching, "teaching", server.admin)
    stow(server, research, "research", server.admin)
    server.series = {name: str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
                     for name, paths in (("teaching", teaching), ("research", research))}
    yield server
    server.stop()


def log_in(page, issuer: MockOAuth2, user: str, claims: dict) -> None:
    """Press Log in, fill the issuer's form, and come back to the page logged in."""
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{issuer.issuer('web')}/authorize?*")
    page.fill("input[name=username]", user)
    page.fill("textarea[name=claims]", json.dumps(claims))
    page.click("input[type=submit]")


def test_pkce_login_then_only_granted_collections(archive, issuer, page):
    # the issuer's own login page asks a font host this machine cannot reach; not the archive's page
    page.allow_errors("status of 401", "fonts.googleapis.com", "ERR_NAME_NOT_RESOLVED", "ERR_INTERNET_DISCONNECTED")
    page.goto(f"{archive.url}/?sort=collection")
    wait_results(page)
    assert "Please log in to search" in page.locator("#page-errors").inner_text()
    seen: list[tuple[str, str | None]] = []
    page.on("request", lambda r: seen.append((r.url, r.headers.get("authorization"))))
    log_in(page, issuer, "alice", {"aud": [CLIENT], "collections": ["research"]})
    page.wait_for_url(f"{archive.url}/?sort=collection")  # back where the login started, the query kept
    wait_results(page)
    assert "Logged in as alice" in page.locator("#auth-status").inner_text()
    links = page.eval_on_selector_all("#hits .hit h3 a", "links => links.map(a => a.getAttribute('href'))")
    assert links == [f"/slides/{archive.series['research']}"]
    collections = page.eval_on_selector_all('.facet[data-field="collection"] input', "i => i.map(x => x.dataset.value)")
    assert collections == ["research"]
    page.wait_for_function("[...document.querySelectorAll('#hits img.thumb')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30000)
    token = page.evaluate("sessionStorage.getItem('slidearchive.token')")
    assert token and token.count(".") == 2  # a JWT from the issuer, not an API key
    ours = [(u, a) for u, a in seen if u.startswith(archive.url) and ("/api/" in u or "/dicomweb/" in u)]
    assert ours and all(a == f"Bearer {token}" for _, a in ours), ours
    exchange = [u for u, _ in seen if u == f"{issuer.issuer('web')}/token"]
    assert exchange, "the code was not traded at the token endpoint"
    authorize = next(u for u, _ in seen if "/authorize?" in u)
    assert "code_challenge_method=S256" in authorize and "code_challenge=" in authorize

    page.get_by_role("button", name="Log out").click()
    wait_results(page)
    assert page.evaluate("sessionStorage.getItem('slidearchive.token')") is None
    assert "Please log in to search" in page.locator("#page-errors").inner_text()


def test_a_login_with_the_wrong_verifier_is_refused_and_said(archive, issuer, page):
    # the issuer's refusal carries no CORS header, so the browser logs a blocked fetch
    page.allow_errors("status of 401", "fonts.googleapis.com", "ERR_NAME_NOT_RESOLVED", "ERR_INTERNET_DISCONNECTED",
                      f"Access to fetch at '{issuer.issuer('web')}/token'", f"ERR_FAILED ({issuer.issuer('web')}/token)")
    page.goto(f"{archive.url}/")
    wait_results(page)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{issuer.issuer('web')}/authorize?*")
    # back on the archive, before its script runs: a verifier other than the one the challenge was made
    # from (what someone holding only the code would have)
    page.add_init_script("""if (location.pathname === '/login/callback') {
        const p = JSON.parse(sessionStorage.getItem('slidearchive.login'))
        p.verifier = 'x'.repeat(64)
        sessionStorage.setItem('slidearchive.login', JSON.stringify(p)) }""")
    page.fill("input[name=username]", "mallory")
    page.fill("textarea[name=claims]", json.dumps({"aud": [CLIENT], "collections": ["research"]}))
    page.click("input[type=submit]")
    page.wait_for_url(f"{archive.url}/login/callback?*")
    page.locator("#page-errors p").first.wait_for()
    assert "Login failed: the login service refused the code" in page.locator("#page-errors").inner_text()
    assert page.evaluate("sessionStorage.getItem('slidearchive.token')") is None
    assert "invalid_pkce" in issuer.log.read_text()  # the issuer checked the verifier against the challenge


def test_a_login_answer_not_started_here_is_refused(archive, page):
    page.goto(f"{archive.url}/login/callback?code=stolen&state=guess")
    page.locator("#page-errors p").first.wait_for()
    assert "does not belong to a login started here" in page.locator("#page-errors").inner_text()
