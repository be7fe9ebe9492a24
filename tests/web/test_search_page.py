"""The browse and search page at / in Debian's Chromium against a real server: free text and
facets find stored slides, thumbnails load, the query lives in the address, no script errors,
axe-core clean; a search the index cannot answer and an index that is down are said in words."""
from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import IDENTIFIED, Server, free_port
from harness import assert_accessible, chromium, page  # noqa: F401  (the browser fixtures)
from slides import SlideSpec, make_slide
from test_datasets_api import stow
from test_results_support import api, feature


def relabel(paths: list[Path], organ: tuple[str, str, str], description: str) -> list[Path]:
    """Make the slide another organ's: its specimen's anatomic structure and the descriptions."""
    value, scheme, meaning = organ
    for path in paths:
        ds = pydicom.dcmread(path)
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
        for spec in ds.SpecimenDescriptionSequence:
            spec.PrimaryAnatomicStructureSequence = Sequence([code])
            spec.SpecimenShortDescription = spec.SpecimenDetailedDescription = description
        ds.SeriesDescription = ds.StudyDescription = description
        ds.save_as(path)
    return paths


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two slides: a breast H&E in "teaching" with one AI result, a prostate biopsy in "research"."""
    server = Server(tmp_path_factory.mktemp("search-page"), IDENTIFIED, dimse=False).start()
    breast = make_slide(tmp_path_factory.mktemp("breast"), SlideSpec(width=768, height=512, seed=41, label=False))
    prostate = relabel(make_slide(tmp_path_factory.mktemp("prostate"),
                                  SlideSpec(width=512, height=512, seed=42, label=False, patient_id="PAT-0002",
                                            accession="ACC-0002")),
                       ("41216001", "SCT", "Prostate"), "Prostate needle biopsy")
    stow(server, breast, "teaching")
    stow(server, prostate, "research")
    server.series = {name: str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
                     for name, paths in (("breast", breast), ("prostate", prostate))}
    status, made = api(server, "POST", f"/slides/{server.series['breast']}/annotations",  # an AI result on one
                       {"geojson": {"type": "FeatureCollection", "features": [
                           feature("Polygon", [[[100, 100], [160, 100], [160, 160], [100, 100]]], "Tumor")]},
                        "algorithm": {"name": "cellfinder", "version": "2.1"}})
    assert status == 201, made
    deadline = time.time() + 120  # the index worker picks the result up from the catalog's outbox
    while not requests.get(f"{server.url}/api/search", params={"ai.present": "true"}).json()["total"]:
        assert time.time() < deadline, "the AI result never reached the index"
        time.sleep(0.2)
    yield server
    server.stop()


def open_search(page, url: str) -> None:
    page.goto(url)
    wait_results(page)


def wait_results(page) -> None:
    page.wait_for_function("window.searchPage && window.searchPage.ready", timeout=30000)


def hit_links(page) -> list[str]:
    return page.eval_on_selector_all("#hits .hit h3 a", "links => links.map(a => a.getAttribute('href'))")


def facet_row(page, field: str, label: str):
    return page.locator(f'.facet[data-field="{field}"] li', has=page.get_by_label(label, exact=True))


def test_free_text_finds_the_slide_and_its_thumbnail_loads(archive, page):
    open_search(page, f"{archive.url}/?q=prostate")
    assert hit_links(page) == [f"/slides/{archive.series['prostate']}"]
    assert "1 slide found" in page.locator("#search-status").inner_text()
    card = page.locator("#hits .hit").first.inner_text()
    assert "research" in card and "Prostate" in card
    page.wait_for_function("[...document.querySelectorAll('#hits img.thumb')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30000)


def test_typing_a_search_puts_it_in_the_address(archive, page):
    open_search(page, f"{archive.url}/")
    assert sorted(hit_links(page)) == sorted(f"/slides/{s}" for s in archive.series.values())
    page.fill("#q", "breast")
    page.click("#search-form button[type=submit]")
    page.wait_for_url("**/?q=breast")
    wait_results(page)
    assert hit_links(page) == [f"/slides/{archive.series['breast']}"]
    page.go_back()  # back to everything
    page.wait_for_url(f"{archive.url}/")
    wait_results(page)
    assert len(hit_links(page)) == 2


def test_a_facet_narrows_and_greys_what_no_longer_matches(archive, page):
    open_search(page, f"{archive.url}/")
    research = facet_row(page, "collection", "research")
    assert research.locator(".count").inner_text() == "1"
    page.get_by_label("research", exact=True).click()
    page.wait_for_url("**/?collection=research")
    wait_results(page)
    assert hit_links(page) == [f"/slides/{archive.series['prostate']}"]
    breast = facet_row(page, "specimen.anatomy_codes", "Breast")
    assert breast.get_attribute("class") == "empty" and breast.locator(".count").inner_text() == "0"
    assert page.get_by_label("Breast", exact=True).is_disabled()
    assert page.get_by_label("research", exact=True).is_checked()


def test_a_shared_address_shows_the_same_search(archive, page):
    open_search(page, f"{archive.url}/?specimen.anatomy_codes=SCT:76752008&sort=-study.date&size=50")
    assert hit_links(page) == [f"/slides/{archive.series['breast']}"]
    assert page.input_value("#sort") == "-study.date" and page.input_value("#size") == "50"
    assert page.get_by_label("Breast", exact=True).is_checked()


def test_the_search_page_passes_axe(archive, page):
    open_search(page, f"{archive.url}/?q=breast")
    assert_accessible(page)


def test_a_search_the_index_cannot_answer_is_said_and_the_page_keeps_working(archive, page):
    page.allow_errors("status of 400")  # the browser logs the API's 400 itself
    open_search(page, f"{archive.url}/?sort=patient.id")
    message = page.locator("#page-errors").inner_text()
    assert "The search could not be answered" in message and "cannot sort on 'patient.id'" in message
    assert page.locator("#hits .hit").count() == 0
    page.select_option("#sort", "")
    page.click("#search-form button[type=submit]")
    wait_results(page)
    assert len(hit_links(page)) == 2 and page.locator("#page-errors").inner_text() == ""


def test_an_index_that_is_down_is_said(tmp_path, page):
    dead = f'[index]\nbackend = "elasticsearch"\nurls = ["http://127.0.0.1:{free_port()}"]\n'
    server = Server(tmp_path, IDENTIFIED + dead, dimse=False).start()
    try:
        page.allow_errors("status of 503")
        open_search(page, f"{server.url}/?q=breast")
        message = page.locator("#page-errors").inner_text()
        assert "The search index is unavailable just now" in message and "Try again" in message
        page.fill("#q", "prostate")  # the form still answers, and says it again
        page.click("#search-form button[type=submit]")
        page.wait_for_url("**/?q=prostate")
        wait_results(page)
        assert "unavailable" in page.locator("#page-errors").inner_text()
    finally:
        server.stop()


def test_sorted_pages(archive, page):
    open_search(page, f"{archive.url}/?sort=collection&size=1")  # research before teaching, one a page
    assert hit_links(page) == [f"/slides/{archive.series['prostate']}"]
    assert page.locator("#pager [aria-current=page]").inner_text() == "1"
    page.get_by_role("link", name="Next").click()
    page.wait_for_url("**/?sort=collection&size=1&page=2")
    wait_results(page)
    assert hit_links(page) == [f"/slides/{archive.series['breast']}"]
    assert "showing 2–2" in page.locator("#search-status").inner_text()


def test_has_ai_results(archive, page):
    open_search(page, f"{archive.url}/")
    page.get_by_label("Yes", exact=True).click()
    page.wait_for_url("**/?ai.present=true")
    wait_results(page)
    assert hit_links(page) == [f"/slides/{archive.series['breast']}"]
    assert "cellfinder (1 annotation)" in page.locator("#hits .hit").first.inner_text()
