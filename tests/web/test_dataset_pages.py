"""Dataset landing pages in a real Chromium against a real server: what a reader and a crawler
see, no script errors, accessible (axe-core, WCAG 2 A and AA)."""
from __future__ import annotations


import pytest
import requests

from conftest import REPO, Server
from slides import SlideSpec, make_slide
from test_datasets_api import DERM, stow
from test_slide_page import chromium, page  # noqa: F401  (the browser fixtures of the web tests)
from harness import axe_violations

assert (REPO / "node_modules" / "axe-core").is_dir(), "npm ci has not been run (scripts/test.sh runs it)"


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Server:
    server = Server(tmp_path_factory.mktemp("dspages"), "", dimse=False).start()
    paths = make_slide(tmp_path_factory.mktemp("slide"), SlideSpec(width=512, height=512, seed=901, label=False,
                                                                   overview=False))
    stow(server, paths, "derm")
    for _ in range(2):  # two versions: the page lists both
        assert requests.post(f"{server.url}/api/datasets", json=DERM).status_code in (201, 409)
        assert requests.post(f"{server.url}/api/datasets/derm-2024/releases").status_code == 201
    yield server
    server.stop()


def test_the_landing_page_reads_well_and_carries_its_metadata(released, page):
    page.goto(f"{released.url}/datasets/derm-2024/v2")
    assert page.locator("h1").inner_text() == DERM["title"]
    citation = page.locator("blockquote.citation").inner_text()
    assert citation == requests.get(f"{released.url}/api/datasets/derm-2024/releases/2/citation").text.strip()
    assert "Version 2" in page.locator("main").inner_text()
    assert page.locator("table.versions tr").count() == 3  # header + two versions
    embedded = page.evaluate("JSON.parse(document.querySelector('script[type=\"application/ld+json\"]').textContent)")
    assert embedded == requests.get(f"{released.url}/api/datasets/derm-2024/releases/2/jsonld").json()
    assert embedded["isBasedOn"] == "urn:slidearchive:dataset:derm-2024:v1"
    assert page.errors.unexpected() == []
    assert axe_violations(page) == []


def test_the_catalogue_finds_and_links_the_newest_release(released, page):
    page.goto(f"{released.url}/datasets")
    page.get_by_label("Search datasets").fill("breast biopsies")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/datasets?q=breast+biopsies")
    page.get_by_role("link", name=DERM["title"]).click()
    page.wait_for_url("**/datasets/derm-2024/v2")
    assert page.errors.unexpected() == []
    page.goto(f"{released.url}/datasets")
    assert axe_violations(page) == []
