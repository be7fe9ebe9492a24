"""The slide page in a real Chromium against a real server: tissue drawn, AI overlays, annotating,
the token on every request, accessibility, and pages that must explain what went wrong."""
from __future__ import annotations

import base64
import json
import urllib.request

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from conftest import IDENTIFIED, REPO, Server
from slides import SlideSpec, make_slide
from test_results_support import api, feature, stow
from harness import PageErrors, admin_key, axe_violations, browser
from viewer_support import colour_count, draw_polygon, get_json, open_slide, tissue_fraction, viewer_pixels

assert (REPO / "node_modules" / "dicom-microscopy-viewer").is_dir(), "npm ci has not been run (scripts/test.sh runs it)"
SPEC = SlideSpec(width=2400, height=1600, tile=256, seed=11)


def _series(paths) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def slide(web_server, tmp_path_factory):
    """A stored slide with one AI result: 40 'Tumor' squares across the tissue."""
    paths = make_slide(tmp_path_factory.mktemp("slide"), SPEC)
    status, body = stow(web_server, paths)
    assert status == 200, body
    series = _series(paths)
    cells = [feature("Polygon", [[[x, y], [x + 60, y], [x + 60, y + 60], [x, y + 60], [x, y]]], "Tumor")
             for x in range(300, 2100, 200) for y in range(300, 1400, 250)]
    status, made = api(web_server, "POST", f"/slides/{series}/annotations",
                       {"geojson": {"type": "FeatureCollection", "features": cells},
                        "algorithm": {"name": "cellfinder", "version": "2.1"}})
    assert status == 201, made
    return series, made


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.errors = PageErrors(page)
    yield page
    context.close()


def test_slide_page_draws_tissue_and_metadata(web_server, slide, page):
    series, _ = slide
    open_slide(page, f"{web_server.url}/slides/{series}")
    assert page.evaluate("window.slidePage.errors") == []
    assert tissue_fraction(viewer_pixels(page)) > 0.05  # stained tissue on the canvas, not a blank element
    facts = page.locator("#slide-facts").inner_text()
    assert "Stain" in facts and "eosin" in facts and "Scanner" in facts
    levels = page.locator("#slide-levels li").all_inner_texts()
    assert levels[0].startswith(f"level 0: {SPEC.width} × {SPEC.height} px")
    assert page.locator("#slide-thumbnail").get_attribute("src")
    assert page.errors.unexpected() == []


def test_keys_change_level(web_server, slide, page):
    series, _ = slide
    open_slide(page, f"{web_server.url}/slides/{series}")
    zoom = page.evaluate("window.slidePage.map.getView().getZoom()")
    page.locator("#viewer").focus()
    page.keyboard.press("+")
    assert page.evaluate("window.slidePage.map.getView().getZoom()") == zoom + 1
    page.keyboard.press("-")
    assert page.evaluate("window.slidePage.map.getView().getZoom()") == zoom


def _show_overlay(page, sop: str) -> None:
    page.locator(f'#slide-results li[data-instance="{sop}"] input[type=checkbox]').check()
    page.wait_for_selector(f'#slide-results li[data-instance="{sop}"][data-state="shown"]', timeout=30000)
    page.wait_for_timeout(800)  # the overlay layer renders on the next frames


def _group_colour(page, sop: str) -> list[int]:
    return page.evaluate(f"""async () => {{
        const {{ propertyColour }} = await import('/static/slide/overlays.js')
        const r = window.slidePage.results.find((r) => r.sop_instance === '{sop}')
        return propertyColour(r.groups[0]) }}""")


def test_ai_annotation_overlay_appears(web_server, slide, page):
    series, made = slide
    open_slide(page, f"{web_server.url}/slides/{series}")
    page.wait_for_function("window.slidePage.results !== undefined")
    row = page.locator(f'#slide-results li[data-instance="{made["sop_instance"]}"]').inner_text()
    assert "cellfinder 2.1" in row and "Tumor" in row and "45 annotations" in row
    colour = _group_colour(page, made["sop_instance"])
    before = colour_count(viewer_pixels(page), colour, 20)
    _show_overlay(page, made["sop_instance"])
    after = colour_count(viewer_pixels(page), colour, 20)
    assert after > before + 200, (before, after)
    page.mouse.move(400, 400)  # pointer moves over a shown overlay must not raise
    page.mouse.move(420, 420)
    assert page.errors.unexpected() == []


def test_drawn_polygon_saved_exactly_and_back_after_reload(web_server, slide, page):
    series, _ = slide
    open_slide(page, f"{web_server.url}/slides/{series}")
    page.wait_for_function("window.slidePage.results !== undefined")
    page.fill("#annotate-class", "Necrosis")
    page.click("button[data-tool=polygon]")
    draw_polygon(page, [(300, 250), (420, 250), (420, 360), (300, 360)])
    assert page.locator("#annotate-count").inner_text() == "1 unsaved region"
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/annotations")) as posted:
        page.click("#annotate-save")
    sent = json.loads(posted.value.post_data)["geojson"]["features"]
    page.wait_for_function("window.slidePage.lastSaved || window.slidePage.errors.length", timeout=30000)
    saved = page.evaluate("window.slidePage.lastSaved")
    assert saved and saved["status"] == "stored", page.evaluate("window.slidePage.errors")

    back = get_json(f"{web_server.url}/api/slides/{series}/annotations?instance={saved['sop_instance']}")
    assert [f["geometry"] for f in back["features"]] == [f["geometry"] for f in sent]  # bit for bit
    assert back["features"][0]["properties"]["classification"]["name"] == "Necrosis"
    ring = np.asarray(sent[0]["geometry"]["coordinates"][0])
    assert len(ring) == 5 and np.ptp(ring[:, 0]) > 50  # the drawn square, in level-0 pixels

    page.reload()
    page.wait_for_function("window.slidePage && window.slidePage.results !== undefined", timeout=60000)
    with page.expect_response(lambda r: r.url.endswith(f"{saved['sop_instance']}/metadata")) as meta:
        page.locator(f'#slide-results li[data-instance="{saved["sop_instance"]}"] input').check()
    page.wait_for_selector(f'#slide-results li[data-instance="{saved["sop_instance"]}"][data-state="shown"]')
    page.wait_for_timeout(800)
    coordinates = _coordinates(meta.value.json()[0]).reshape(-1, 2)
    assert np.array_equal(coordinates, ring[:-1])  # what the overlay draws: the drawn vertices, exactly
    colour = _group_colour(page, saved["sop_instance"])
    shown = viewer_pixels(page)
    box = page.locator("#viewer").bounding_box()
    outline = shown[250 - 4:360 + 4, 300 - 4:420 + 4]
    assert colour_count(outline, colour, 40) > 50, "the saved polygon is not drawn where it was drawn"
    assert colour_count(shown, colour, 40) - colour_count(outline, colour, 40) < 50
    assert box and page.errors.unexpected() == []


def _coordinates(metadata: dict) -> np.ndarray:
    """Double Point Coordinates Data of the first group as the viewer receives it (inline or bulk data)."""
    element = metadata["006A0002"]["Value"][0]["00660022"]
    if "InlineBinary" in element:
        raw = base64.b64decode(element["InlineBinary"])
    else:
        with urllib.request.urlopen(urllib.request.Request(element["BulkDataURI"],
                                                           headers={"Accept": "application/octet-stream"})) as r:
            raw = r.read()
    return np.frombuffer(raw, dtype="<f8")


def test_rejected_save_shows_the_reason_and_stores_nothing(web_server, slide, page):
    series, _ = slide
    open_slide(page, f"{web_server.url}/slides/{series}")
    page.wait_for_function("window.slidePage.results !== undefined")
    count = len(get_json(f"{web_server.url}/api/slides/{series}/results")["results"])
    page.fill("#annotate-class", "bad\\name")  # a backslash is refused in a class name
    page.click("button[data-tool=rectangle]")
    box = page.locator("#viewer").bounding_box()
    page.mouse.click(box["x"] + 500, box["y"] + 300)
    page.mouse.click(box["x"] + 560, box["y"] + 350)
    page.wait_for_timeout(300)
    page.click("#annotate-save")
    page.wait_for_function("window.slidePage.errors.length > 0", timeout=30000)
    errors = page.evaluate("window.slidePage.errors")
    assert any("save" in e and "backslash" in e for e in errors), errors
    assert page.locator("#slide-error").is_visible()
    assert len(get_json(f"{web_server.url}/api/slides/{series}/results")["results"]) == count
    assert page.errors.unexpected("status of 400") == []


def test_slide_page_passes_axe(web_server, slide, page):
    series, _ = slide
    open_slide(page, f"{web_server.url}/slides/{series}")
    page.wait_for_function("window.slidePage.results !== undefined")
    assert axe_violations(page) == []


def test_slide_that_does_not_exist(web_server, page):
    open_slide(page, f"{web_server.url}/slides/1.2.826.0.1.3680043.8.498.1")
    assert "no such slide" in page.locator("#slide-error").inner_text()
    assert page.locator("#slide-status").inner_text() == "The slide cannot be shown"
    assert page.errors.unexpected("status of 404") == []


def test_malformed_series_uid(web_server, page):
    response = page.goto(f"{web_server.url}/slides/not-a-uid")
    assert response.status == 400
    assert "SeriesInstanceUID" in page.locator("#slide-error").inner_text()


def test_series_without_pyramid(web_server, slide, page):
    _, made = slide  # the annotation series: stored, but no VOLUME images
    open_slide(page, f"{web_server.url}/slides/{made['series']}")
    assert "no VL Whole Slide Microscopy VOLUME images" in page.locator("#slide-error").inner_text()
    assert page.errors.unexpected("status of 404") == []


def test_frames_that_fail_to_decode(web_server, tmp_path, page):
    """Every tile of this slide is a JPEG start marker followed by noise: the page must say so."""
    spec = SlideSpec(width=800, height=600, tile=256, seed=23, patient_id="BROKEN-1", label=False, overview=False)
    paths = make_slide(tmp_path, spec)
    rng = np.random.default_rng(5)
    for path in paths:
        ds = pydicom.dcmread(path)
        frames = int(ds.get("NumberOfFrames", 1))
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + rng.bytes(300) for _ in range(frames)], has_bot=True)
        ds.save_as(path)
    status, body = stow(web_server, paths)
    assert status == 200, body
    open_slide(page, f"{web_server.url}/slides/{_series(paths)}")
    page.wait_for_function("window.slidePage.errors.length > 0", timeout=60000)
    assert "tiles could not be shown" in " ".join(page.evaluate("window.slidePage.errors"))
    assert page.locator("#slide-error").is_visible()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    server = Server(root, IDENTIFIED + "\n[auth]\nenabled = true\n", dimse=False)
    server.admin = admin_key(server)
    server.start()
    yield server
    server.stop()


def test_frames_fetched_with_the_token_when_auth_is_on(auth_server, tmp_path, page):
    paths = make_slide(tmp_path, SlideSpec(width=1024, height=768, seed=31, patient_id="AUTH-W"))
    import requests

    boundary = "webauth"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    r = requests.post(f"{auth_server.dicomweb}/studies", data=body, headers={
        "Authorization": f"Bearer {auth_server.admin}", "Accept": "application/dicom+json",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text
    page.context.add_init_script(f"sessionStorage.setItem('slidearchive.token', {json.dumps(auth_server.admin)})")
    seen = []
    page.on("request", lambda req: seen.append((req.url, req.headers.get("authorization"))))
    open_slide(page, f"{auth_server.url}/slides/{_series(paths)}")
    assert page.evaluate("window.slidePage.errors") == []
    assert tissue_fraction(viewer_pixels(page)) > 0.05
    frames = [(u, a) for u, a in seen if "/frames/" in u]
    assert frames, "no frame was requested"
    assert all(a == f"Bearer {auth_server.admin}" for _, a in frames)
    api_calls = [(u, a) for u, a in seen if "/api/" in u or "/dicomweb/" in u]
    assert all(a == f"Bearer {auth_server.admin}" for _, a in api_calls)

    page.wait_for_function("window.slidePage.results !== undefined")
    page.click("button[data-tool=point]")
    box = page.locator("#viewer").bounding_box()
    page.mouse.click(box["x"] + 400, box["y"] + 300)
    page.wait_for_timeout(300)
    page.click("#annotate-save")
    page.wait_for_function("window.slidePage.lastSaved || window.slidePage.errors.length", timeout=30000)
    saved = page.evaluate("window.slidePage.lastSaved")
    assert saved, page.evaluate("window.slidePage.errors")
    me = get_json(f"{auth_server.url}/api/whoami", auth_server.admin)
    results = get_json(f"{auth_server.url}/api/slides/{_series(paths)}/results", auth_server.admin)["results"]
    assert [r["creator"] for r in results if r["sop_instance"] == saved["sop_instance"]] == [me["subject"]]


def test_without_the_token_the_page_says_so(auth_server, page):
    open_slide(page, f"{auth_server.url}/slides/1.2.826.0.1.3680043.8.498.2")
    text = page.locator("#slide-error").inner_text()
    assert "slide:" in text and ("credentials" in text or "authenticat" in text.lower()), text


def test_compare_links_pan_and_zoom(web_server, slide, tmp_path, page):
    series, _ = slide
    paths = make_slide(tmp_path, SlideSpec(width=2400, height=1600, tile=256, seed=12, patient_id="CMP-2"))
    status, body = stow(web_server, paths)
    assert status == 200, body
    other = _series(paths)
    page.goto(f"{web_server.url}/compare?series={series}&series={other}")
    page.wait_for_function("window.comparePage.linked && window.comparePage.drawn >= 2", timeout=60000)
    for pane in page.locator(".compare-pane .viewer").all():
        png = pane.screenshot()
        from PIL import Image
        import io
        assert tissue_fraction(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)) > 0.05
    state = "() => window.comparePage.maps.map((m) => [m.getView().getCenter(), m.getView().getResolution()])"
    start = page.evaluate(state)
    page.evaluate("""() => { const v = window.comparePage.maps[0].getView()
        v.setZoom(v.getZoom() + 1); v.setCenter([700, -500]) }""")
    moved = page.evaluate(state)
    assert moved[1] == moved[0] and moved[0] != start[0]  # the second slide followed the first
    assert page.errors.unexpected() == []
    assert axe_violations(page) == []


def test_compare_needs_two_slides(web_server, page):
    response = page.goto(f"{web_server.url}/compare?series=1.2.3")
    assert response.status == 400
    assert "compare needs 2" in page.locator(".slide-error").inner_text()


def _pixel_change(before: np.ndarray, after: np.ndarray) -> int:
    return int((np.abs(after - before).max(axis=2) > 60).sum())


def test_measurement_report_and_segmentation_overlays(web_server, slide, tmp_path, page):
    """A Slim-style Comprehensive 3D SR and a segmentation on the slide: listed, and drawn when switched on."""
    from test_results_sr import NEOPLASM, report
    from test_results_support import post_mask

    series, _ = slide
    level0 = next(h for h in (pydicom.dcmread(p, stop_before_pixels=True)
                              for p in make_slide(tmp_path / "again", SPEC))
                  if h.ImageType[2] == "VOLUME" and h.TotalPixelMatrixColumns == SPEC.width)
    sr = report(level0, [(NEOPLASM, "POLYGON", [[600, 500], [1500, 500], [1500, 1100], [600, 1100], [600, 500]])])
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    status, body = stow(web_server, [tmp_path / "sr.dcm"])
    assert status == 200, body
    mask = np.zeros((SPEC.height // 4, SPEC.width // 4), dtype=np.uint8)
    mask[100:300, 150:450] = 1
    status, seg = post_mask(web_server, series, mask, {"level": 2, "segments": [{"label": "Tumor bed"}],
                                                       "algorithm": {"name": "segger", "version": "3"}})
    assert status == 201, seg

    open_slide(page, f"{web_server.url}/slides/{series}")
    page.wait_for_function("window.slidePage.results !== undefined")
    for sop in (sr.SOPInstanceUID, seg["sop_instance"]):
        before = viewer_pixels(page)
        _show_overlay(page, sop)
        assert _pixel_change(before, viewer_pixels(page)) > 500, sop
    assert page.errors.unexpected() == []


def test_downloads(web_server, slide, page):
    import io
    import tarfile

    series, made = slide
    open_slide(page, f"{web_server.url}/slides/{series}")
    page.wait_for_function("window.slidePage.results !== undefined")
    with page.expect_download() as slide_file:
        page.click("#download-slide")
    with tarfile.open(slide_file.value.path()) as tar:
        members = tar.getmembers()
        stored = get_json(f"{web_server.dicomweb}/instances?SeriesInstanceUID={series}")
        assert len(members) == len(stored)
        first = pydicom.dcmread(io.BytesIO(tar.extractfile(members[0]).read()))
        assert first.SeriesInstanceUID == series
    row = page.locator(f'#slide-results li[data-instance="{made["sop_instance"]}"]')
    with page.expect_download() as geo:
        row.locator("button", has_text="GeoJSON").click()
    collection = json.loads(open(geo.value.path()).read())
    assert len(collection["features"]) == 45
    with page.expect_download() as dicom:
        row.locator("button", has_text="DICOM").click()
    with tarfile.open(dicom.value.path()) as tar:
        assert [m.name.endswith(f"{made['sop_instance']}.dcm") for m in tar.getmembers()] == [True]
    assert page.errors.unexpected() == []
