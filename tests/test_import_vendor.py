"""Vendor slide import (issue 13): real Aperio SVS, generated SVS and generic TIFF, through the one ingest path."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import tifffile

from test_faults import small_disk  # noqa: F401  (a tmpfs of a few MB: a disk that fills)
from vendor_files import CACHE, PHI, cmu_small_region, make_generic_tiff, make_ndpi, make_philips, make_svs

pytestmark = pytest.mark.slow  # each test converts and stores real slides (a few seconds to half a minute)
REPO = Path(__file__).resolve().parent.parent
STAIN = "SCT:12710003:hematoxylin stain;SCT:36879007:water soluble eosin stain"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "archive.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def cmu() -> Path:
    return cmu_small_region(CACHE)


def _scan(jpeg: bytes) -> bytes:
    """The entropy-coded scan of a baseline JPEG: what a lossless copy must keep bit for bit."""
    sos = jpeg.index(b"\xff\xda")
    length = int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    end = jpeg.rindex(b"\xff\xd9")
    return jpeg[sos + 2 + length:end]


def _source_tiles(path: Path, page: int) -> list[bytes]:
    with tifffile.TiffFile(path) as tif, open(path, "rb") as f:
        p = tif.pages[page]
        tiles = []
        for offset, count in zip(p.dataoffsets, p.databytecounts):
            f.seek(offset)
            tiles.append(f.read(count))
        return tiles


def _instances(server) -> list[dict]:
    return requests.get(f"{server.dicomweb}/instances", params={"includefield": "all"}).json()


def _volume_frames(server, instance: dict) -> list[bytes]:
    study, series, sop = (instance[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
    n = int(instance["00280008"]["Value"][0])
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=server.dicomweb)
    return client.retrieve_instance_frames(study, series, sop, list(range(1, n + 1)),
                                           media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))


def _image_type(instance: dict) -> str:
    return instance["00080008"]["Value"][2]


# wsidicom reads metadata without following BulkDataURIs (the ICC profile); pydicom warns about that.
@pytest.mark.filterwarnings("ignore:No bulk data URI handler")
def test_real_svs_is_copied_tile_for_tile_and_its_label_and_macro_are_not_stored(make_server, cmu, tmp_path):
    server = make_server()  # the default: Basic Profile, labels and label-showing overviews dropped
    result = run("import", str(cmu), *server.cli_args)
    assert result.returncode == 0, result.stderr
    assert "vendor slides: 1 converted" in result.stdout
    assert "2 stored" in result.stdout and "2 dropped by policy" in result.stdout
    assert "converting" in result.stderr and "storing 100%" in result.stderr  # the per-file bar
    instances = _instances(server)
    assert sorted(_image_type(i) for i in instances) == ["THUMBNAIL", "VOLUME"]
    volume = next(i for i in instances if _image_type(i) == "VOLUME")
    frames = _volume_frames(server, volume)
    source = _source_tiles(cmu, 0)
    assert len(frames) == len(source) == 130
    assert all(_scan(f) == _scan(s) for f, s in zip(frames, source))  # lossless: the same scans, byte for byte
    assert volume["00282110"]["Value"] == ["01"]  # the SVS tiles were lossy JPEG already: said so
    # the same file again: skipped, nothing new
    again = run("import", str(cmu), *server.cli_args, "-q")
    assert again.returncode == 0 and "1 already imported" in again.stdout
    assert len(_instances(server)) == 2
    # it opens in wsidicom, from the stored files and over DICOMweb
    from wsidicom import WsiDicom, WsiDicomWebClient

    study, series = volume["0020000D"]["Value"][0], volume["0020000E"]["Value"][0]
    with WsiDicom.open_web(WsiDicomWebClient.create_client(server.dicomweb), study, series) as web:
        web_region = np.asarray(web.read_region((0, 0), 0, (480, 480)))
    stored = server.stored_files()
    with WsiDicom.open(stored) as local:
        assert local.size.width == 2220 and local.size.height == 2967
        local_region = np.asarray(local.read_region((0, 0), 0, (480, 480)))
    assert np.array_equal(web_region, local_region)
    import openslide

    with openslide.OpenSlide(str(cmu)) as slide:
        reference = np.asarray(slide.read_region((0, 0), 0, (480, 480)).convert("RGB"))
    assert np.abs(local_region.astype(int) - reference.astype(int)).mean() < 1.0  # same JPEG data, two decoders


def _phi_free(blob: bytes, where: str) -> None:
    for name, value in PHI.items():
        assert value.encode() not in blob, f"planted {name} found in {where}"


@pytest.mark.filterwarnings("ignore:No bulk data URI handler")
def test_generated_svs_with_manifest_leaves_no_planted_vendor_text(make_server, tmp_path):
    server = make_server()
    folder = tmp_path / "export"
    folder.mkdir()
    svs = make_svs(folder / f"{PHI['filename']}.svs", seed=5)
    (folder / "README.md").write_text("scanner export\n")
    manifest = folder / "manifest.csv"
    manifest.write_text("file,specimen,stain,anatomy,collection,case_id\n"
                        f"{svs.name},SPEC-PLANTED-0042,{STAIN},SCT:76752008:Breast,study7,CASE-PLANTED-0099\n")
    result = run("import", str(folder), "--manifest", str(manifest), *server.cli_args, "-q")
    assert result.returncode == 0, result.stderr
    instances = _instances(server)
    assert sorted(_image_type(i) for i in instances) == ["THUMBNAIL", "VOLUME", "VOLUME"]
    secret_values = [*PHI.values(), "SPEC-PLANTED-0042", "CASE-PLANTED-0099"]
    for where, blob in server.kept():
        for value in secret_values:
            assert value.encode() not in blob, f"{value} in {where}"
    answers = [requests.get(f"{server.dicomweb}/{what}").content for what in ("studies", "series", "instances")]
    study = instances[0]["0020000D"]["Value"][0]
    answers.append(requests.get(f"{server.dicomweb}/studies/{study}/metadata").content)
    for blob in answers + [server.log_path.read_bytes(), result.stdout.encode(), result.stderr.encode()]:
        for value in secret_values[:-2]:  # the file name is the user's own input on the command line
            if value == PHI["filename"] and blob in (result.stdout.encode(), result.stderr.encode()):
                continue
            assert value.encode() not in blob
    meta = pydicom.Dataset.from_json(requests.get(f"{server.dicomweb}/studies/{study}/metadata").json()[0])
    assert meta.PatientID.startswith("DEID-")  # the case id, pseudonymised
    spec = meta.SpecimenDescriptionSequence[0]
    assert spec.PrimaryAnatomicStructureSequence[0].CodeValue == "76752008"
    assert meta.OpticalPathSequence[0].ObjectiveLensPower == 20  # AppMag, mapped
    assert float(meta.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0]) == \
        pytest.approx(0.0005)  # MPP = 0.5 um
    assert meta.Manufacturer == "Aperio"
    # frames of both levels are the source tiles' scans, byte for byte
    for page, level in ((0, 2048), (2, 512)):
        inst = next(i for i in instances if _image_type(i) == "VOLUME" and i["00480006"]["Value"][0] == level)
        frames = _volume_frames(server, inst)
        assert [_scan(f) for f in frames] == [_scan(t) for t in _source_tiles(svs, page)]
    # every stored instance is a valid VL WSI instance per dicom3tools (warnings allowed)
    for path in server.stored_files():
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
    # the manifest reached the search index: stain and collection
    for _ in range(100):  # the index worker catches up from the catalog's outbox
        found = requests.get(f"{server.url}/api/search", params={"specimen.stain_codes": "SCT:12710003"}).json()
        if found.get("total"):
            break
        time.sleep(0.1)
    assert found["total"] == 1, found
    assert found["hits"][0]["collection"] == "study7", found


def _quantization_tables(jpeg: bytes) -> list[bytes]:
    tables, at = [], 2
    while at < len(jpeg) and jpeg[at] == 0xFF and jpeg[at + 1] != 0xDA:
        length = int.from_bytes(jpeg[at + 2:at + 4], "big")
        if jpeg[at + 1] == 0xDB:
            tables.append(jpeg[at + 4:at + 2 + length])
        at += 2 + length
    return tables


def test_ndpi_strips_become_tiles_without_re_quantisation(make_server, tmp_path):
    """NDPI pages are one JPEG strip; opentile cuts tiles out of it in the DCT domain (no new quantisation)."""
    server = make_server()
    ndpi = make_ndpi(tmp_path / "slide.ndpi")
    result = run("import", str(ndpi), *server.cli_args, "-q")
    assert result.returncode == 0, result.stderr
    instances = _instances(server)
    kinds = sorted(_image_type(i) for i in instances)
    assert kinds == ["VOLUME", "VOLUME"], kinds  # the macro (it shows the label) dropped by the Basic policy
    with tifffile.TiffFile(ndpi) as tif:
        source = tif.pages[0].asarray()
        source_tables = _quantization_tables(_source_tiles(ndpi, 0)[0])
    base = next(i for i in instances if i["00480006"]["Value"][0] == 2048)
    frames = _volume_frames(server, base)
    columns = int(base["00280011"]["Value"][0])
    across = -(-2048 // columns)
    from PIL import Image
    import io

    for k, frame in enumerate(frames):
        assert _quantization_tables(frame) == source_tables
        tile = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB")).astype(int)
        y, x = (k // across) * columns, (k % across) * columns
        part = source[y:y + columns, x:x + columns].astype(int)
        h, w = part.shape[:2]
        assert np.abs(tile[:h, :w] - part).mean() < 1.0
    for where, blob in server.kept():
        _phi_free(blob, where)
    _phi_free(requests.get(f"{server.dicomweb}/instances", params={"includefield": "all"}).content, "QIDO")


BLANK_OVERVIEW = """
[deid]
default = "research"
[deid.policies.research]
overview = "blank"
overview_label_area = [0, 0, 300, 400]
"""


def test_a_macro_is_kept_blanked_when_the_policy_says_so(make_server, tmp_path):
    server = make_server(BLANK_OVERVIEW)
    svs = make_svs(tmp_path / "s.svs", width=1024, height=768, seed=15, levels=1)
    result = run("import", str(svs), *server.cli_args, "-q")
    assert result.returncode == 0, result.stderr
    instances = _instances(server)
    assert sorted(_image_type(i) for i in instances) == ["OVERVIEW", "THUMBNAIL", "VOLUME"]  # LABEL: dropped
    overview = next(i for i in instances if _image_type(i) == "OVERVIEW")
    from PIL import Image
    import io

    macro = np.asarray(Image.open(io.BytesIO(_volume_frames(server, overview)[0])).convert("RGB")).astype(int)
    assert macro[:384, :272].max() < 16  # the label end, blanked (away from the edge's JPEG ringing)
    assert macro[:, 320:].mean() > 60  # the rest is still the slide
    assert overview["00280301"]["Value"] == ["NO"]  # Burned In Annotation: cleaned


def test_philips_tiff_tiles_are_copied_and_its_xml_does_not_travel(make_server, tmp_path):
    server = make_server()
    philips = make_philips(tmp_path / "slide.tiff")
    result = run("import", str(philips), *server.cli_args, "-q")
    assert result.returncode == 0, result.stderr
    assert "1 converted" in result.stdout
    instances = _instances(server)
    assert sorted(_image_type(i) for i in instances) == ["VOLUME", "VOLUME"]  # label and macro dropped
    base = next(i for i in instances if i["00480006"]["Value"][0] == 2048)
    assert [_scan(f) for f in _volume_frames(server, base)] == [_scan(t) for t in _source_tiles(philips, 0)]
    assert base["00080070"]["Value"] == ["PHILIPS"]  # DICOM_MANUFACTURER, mapped
    for where, blob in server.kept():
        _phi_free(blob, where)
        assert b"DPUfsImport" not in blob and b"FMT0042" not in blob  # the XML; the serial (Basic Profile)


def test_openslide_formats_are_re_encoded_and_say_so(make_server, tmp_path):
    server = make_server()
    tiff = make_generic_tiff(tmp_path / "slide.tiff")
    result = run("import", str(tiff), *server.cli_args, "-q", "--workers", "2")
    assert result.returncode == 0, result.stderr
    instances = _instances(server)
    volumes = [i for i in instances if _image_type(i) == "VOLUME"]
    assert volumes
    base = max(volumes, key=lambda i: i["00480006"]["Value"][0])
    assert base["00282110"]["Value"] == ["01"]
    assert float(base["00282112"]["Value"][0]) > 1  # the ratio, recorded
    assert base["00282114"]["Value"][0] == "ISO_10918_1"
    for where, blob in server.kept():
        _phi_free(blob, where)
    from wsidicom import WsiDicom
    import openslide

    stored = server.stored_files()
    with WsiDicom.open(stored) as wsi, openslide.OpenSlide(str(tiff)) as slide:
        ours = np.asarray(wsi.read_region((256, 256), 0, (512, 512))).astype(float)
        theirs = np.asarray(slide.read_region((256, 256), 0, (512, 512)).convert("RGB")).astype(float)
    mse = ((ours - theirs) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / max(mse, 1e-9)) > 35  # within JPEG quality 90's error


def test_bad_files_fail_one_by_one_and_the_batch_goes_on(tmp_path):
    """With --jobs 2: the files are converted two at a time, in their own processes."""
    data = tmp_path / "data"
    data.mkdir()
    folder = tmp_path / "in"
    folder.mkdir()
    good = make_svs(folder / "good.svs", width=1024, height=768, seed=7, levels=1)
    whole = make_svs(tmp_path / "whole.svs", width=1024, height=768, seed=8, levels=1).read_bytes()
    (folder / "truncated.svs").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.svs").write_text("not a slide at all\n")
    (folder / "scan.czi").write_bytes(b"ZISRAWFILE" + b"\0" * 100)
    (folder / "bad-code.svs").write_bytes(good.read_bytes()[:-1] + b"\0")  # valid file, but its row is bad
    ndpi = bytearray(make_ndpi(tmp_path / "n.ndpi", width=1024, height=768, seed=9).read_bytes())
    dht = ndpi.index(b"\xff\xc4")  # the first strip's Huffman table, made undecodable (turbojpeg: OSError)
    ndpi[dht + 5:dht + 9] = b"\xff" * 4
    (folder / "damaged.ndpi").write_bytes(bytes(ndpi))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"files": [
        {"file": "in/good.svs", "stain": "SCT:12710003:hematoxylin stain"},
        {"file": "in/bad-code.svs", "stain": "SCT:12710004:hematoxylin stain"},  # check digit wrong
        {"file": "in/missing.svs", "specimen": "S9"},
    ]}))
    result = run("import", str(folder), "--manifest", str(manifest), "--data-dir", str(data), "-q", "--jobs", "2")
    assert result.returncode == 1
    err = result.stderr
    assert "truncated.svs: Not a slide:" in err or "truncated.svs: Not a slide" in err, err
    assert "notes.svs: Not a slide" in err
    assert "scan.czi: Unsupported slide format: Zeiss CZI" in err
    assert "bad-code.svs: Invalid manifest" in err and "check digit" in err
    assert "row 3" in err and "does not exist" in err  # in/missing.svs
    assert "damaged.ndpi: Not a slide: Hamamatsu NDPI: conversion failed (image data that cannot be decoded" in err
    assert "vendor slides: 1 converted, 0 already imported, 6 failed" in result.stdout
    verify = run("verify", "--data-dir", str(data), "--checksums")
    assert verify.returncode == 0, verify.stdout  # nothing half-stored, no temp files
    assert not any((data / "imports" / "work").iterdir())


def test_vendor_files_with_bytes_changed_convert_or_fail_with_a_reason(tmp_path):
    """SVS and NDPI files with a few bytes changed (in the header, in the image data, near the end):
    each one is converted or reported failed with a reason, the batch goes on, nothing is half-stored."""
    import random

    data, folder = tmp_path / "data", tmp_path / "in"
    data.mkdir()
    folder.mkdir()
    sources = [make_svs(tmp_path / "s.svs", width=1024, height=768, seed=7, levels=2).read_bytes(),
               make_ndpi(tmp_path / "n.ndpi", width=1024, height=768, seed=7).read_bytes()]
    rng = random.Random(2)  # fixed: the same files in every run
    names = []
    for n in range(20):
        source = sources[n % 2]
        changed = bytearray(source)
        for _ in range(rng.choice([1, 2, 4, 16])):
            at = rng.choice([rng.randrange(512), len(changed) - 1 - rng.randrange(2048), rng.randrange(len(changed))])
            changed[at] = rng.randrange(256)
        names.append(f"m{n}.{'svs' if n % 2 == 0 else 'ndpi'}")
        (folder / names[-1]).write_bytes(bytes(changed))
    result = run("import", str(folder), "--data-dir", str(data), "-q")
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr[-3000:]
    summary = re.search(r"vendor slides: (\d+) converted, 0 already imported, (\d+) failed", result.stdout)
    assert summary and int(summary.group(1)) + int(summary.group(2)) == len(names), result.stdout
    failed = [line for line in result.stderr.splitlines() if re.match(rf"{re.escape(str(folder))}/m\d+\.", line)]
    assert len(failed) == int(summary.group(2)), result.stderr[-3000:]
    assert all(re.search(r": (Not a slide|Unsupported slide format): \S", line) for line in failed), failed
    verify = run("verify", "--data-dir", str(data), "--checksums")
    assert verify.returncode == 0, verify.stdout


def test_an_interrupted_import_is_undone_and_redone(tmp_path):
    """A crash between two stored instances: the next run removes the partial slide and imports it whole."""
    data = tmp_path / "data"
    data.mkdir()
    svs = make_svs(tmp_path / "s.svs", width=1024, height=768, seed=9)
    crash = ("import sys; sys.path.insert(0, sys.argv[1]);"
             "import archive.service as s;"
             "orig = s.Archive.store_file; n = [0]\n"
             "def store(self, *a, **k):\n"
             "    n[0] += 1\n"
             "    if n[0] == 2: import os; os._exit(9)\n"
             "    return orig(self, *a, **k)\n"
             "s.Archive.store_file = store\n"
             "from archive.cli import main; main(sys.argv[2:])")
    crashed = subprocess.run([sys.executable, "-c", crash, str(REPO), "import", str(svs), "--data-dir", str(data),
                              "-q"], capture_output=True, text=True)
    assert crashed.returncode == 9
    listed = run("verify", "--data-dir", str(data))
    assert "1 instances in the catalog" in listed.stdout  # the partial import the crash left
    again = run("import", str(svs), "--data-dir", str(data), "-q")
    assert again.returncode == 0, again.stderr
    assert "1 converted" in again.stdout
    after = run("verify", "--data-dir", str(data), "--repair")
    assert "3 instances in the catalog" in after.stdout  # two levels and the thumbnail, each once


def test_a_disk_filling_mid_conversion_fails_that_file_only(tmp_path, small_disk):
    data = small_disk / "data"
    data.mkdir()
    folder = tmp_path / "in"
    folder.mkdir()
    make_svs(folder / "a-big.svs", width=4096, height=4096, seed=11, levels=1)
    make_svs(folder / "b-small.svs", width=512, height=512, seed=12, levels=1)
    assert (folder / "a-big.svs").stat().st_size > 4 * 1024 * 1024
    result = run("import", str(folder), "--data-dir", str(data), "-q")
    assert result.returncode == 1
    assert "a-big.svs: Out of resources" in result.stderr, result.stderr
    assert "1 converted" in result.stdout and "1 failed" in result.stdout
    verify = run("verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout
    assert "2 instances in the catalog" in verify.stdout  # b-small: its level and thumbnail


def test_large_levels_get_the_extended_offset_table(tmp_path):
    from importer.convert import convert
    from importer.formats import detect

    svs = make_svs(tmp_path / "s.svs", width=1024, height=768, seed=13)
    out = tmp_path / "out"
    out.mkdir()
    files = convert(svs, detect(svs), out, None, "fp", eot_from=1024 * 768 * 3)
    by_columns = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_columns[(ds.ImageType[2], int(ds.TotalPixelMatrixColumns))] = ds
    assert "ExtendedOffsetTable" in by_columns[("VOLUME", 1024)]
    assert "ExtendedOffsetTable" not in by_columns[("VOLUME", 256)]
    uids = {str(ds.SOPInstanceUID) for ds in by_columns.values()} | {str(ds.StudyInstanceUID)
                                                                     for ds in by_columns.values()}
    assert all(u.startswith("2.25.") for u in uids)  # not the converter's default root
    again = tmp_path / "again"
    again.mkdir()
    assert sorted(p.name for p in convert(svs, detect(svs), again, None, "fp")) == sorted(p.name for p in files)


def test_a_level_one_instance_cannot_hold_is_refused_with_the_reason():
    from archive.errors import ConversionRefused
    from importer.convert import Level, check_level

    check_level(Level(200_000, 100_000, 512, 512, 3, 8, encapsulated=True), 0)  # 75k JPEG tiles: fine
    with pytest.raises(ConversionRefused, match="native Pixel Data"):
        check_level(Level(60_000, 40_000, 512, 512, 3, 8, encapsulated=False), 0)


def _wait_job(server, location: str) -> dict:
    for _ in range(600):
        state = requests.get(location).json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"job did not finish: {state}")


def test_upload_over_http_converts_in_the_background(make_server, cmu, tmp_path):
    server = make_server()
    with open(cmu, "rb") as body:  # streamed from the file, as a pipeline would send it
        r = requests.post(f"{server.url}/api/imports", data=body,
                          params={"filename": "cmu.svs", "stain": "SCT:12710003:hematoxylin stain",
                                  "case_id": "CASE-PLANTED-0099"})
    assert r.status_code == 202, r.text
    state = _wait_job(server, r.headers["Location"])
    assert state["status"] == "done", state
    result = state["result"]
    assert result["format"] == "Aperio SVS" and result["lossless"] is True
    assert result["stored"] == 2 and result["dropped"] == 2
    assert any("LABEL" in reason for reason in result["dropped_reasons"])
    series = requests.get(result["series_url"] + "/instances").json()
    assert len(series) == 2
    assert "CASE-PLANTED-0099" not in requests.get(result["series_url"] + "/metadata").text
    assert not list((server.data_dir / "imports" / "jobs").rglob("source.*"))  # the upload is not kept
    # bad uploads: refused before anything is converted, or failed with the reason
    bad = requests.post(f"{server.url}/api/imports", data=b"x" * 10,
                        params={"filename": "a.svs", "stain": "SCT:12710004:hematoxylin stain"})
    assert bad.status_code == 400 and "check digit" in bad.json()["message"]
    assert requests.post(f"{server.url}/api/imports", data=b"x", params={"filename": "a.czi"}).status_code == 415
    assert requests.post(f"{server.url}/api/imports", data=b"", params={"filename": "a.svs"}).status_code == 400
    assert requests.post(f"{server.url}/api/imports", data=b"x", params={"filename": "a.txt"}).status_code == 400
    half = cmu.read_bytes()[:400_000]
    r = requests.post(f"{server.url}/api/imports", data=half, params={"filename": "half.svs"})
    failed = _wait_job(server, r.headers["Location"])
    assert failed["status"] == "failed" and failed["error"]["title"] == "Not a slide", failed
    assert requests.get(f"{server.url}/api/imports/{'0' * 32}").status_code == 404
    assert requests.get(f"{server.url}/api/imports/..%2F..").status_code == 404
    assert len(requests.get(f"{server.dicomweb}/instances").json()) == 2  # nothing half-stored
    # two conversions running (jobs whose process, here this test's, is alive): the next upload waits
    for n in range(2):
        running = server.data_dir / "imports" / "jobs" / f"{n:032x}"
        running.mkdir()
        (running / "job.json").write_text(json.dumps({"status": "converting", "pid": os.getpid()}))
    busy = requests.post(f"{server.url}/api/imports", data=b"x", params={"filename": "a.svs"})
    assert busy.status_code == 503 and "retry" in busy.json()["message"]


def test_vendor_text_is_scrubbed_but_standard_values_are_not():
    from pydicom import Dataset

    from importer.vendortext import scrub, tokens_of

    tokens = tokens_of("Aperio Image Library v12|User = Jane Doe|Filename = MRN-1234|Path = slide") | tokens_of("slide")
    ds = Dataset()
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.SeriesDescription = "scan of MRN-1234"
    ds.OperatorsName = "Jane Doe"
    ds.SoftwareVersions = "Aperio Image Library v12"  # mapped on purpose
    assert sorted(scrub(ds, tokens)) == ["OperatorsName", "SeriesDescription"]
    assert ds.PositionReferenceIndicator == "SLIDE_CORNER" and "SoftwareVersions" in ds


def test_loading_the_converter_leaves_pydicom_config_as_it_was():
    """wsidicomizer turns on pydicom's future behaviour on import; ingest in the same process must not see it."""
    probe = ("import pydicom.config as c; from importer.convert import _import_wsidicomizer; "
             "before = (c._use_future, c.settings.writing_validation_mode); _import_wsidicomizer(); "
             "print(before == (c._use_future, c.settings.writing_validation_mode))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "True"


def test_an_upload_job_is_seen_only_by_its_uploader(tmp_path, cmu):
    from conftest import Server

    server = Server(tmp_path / "server", "[auth]\nenabled = true\n")
    server.data_dir.mkdir(parents=True)

    def key(name: str) -> dict[str, str]:
        made = run("keys", "create", "--name", name, "--grant", "default:write", *server.cli_args)
        assert made.returncode == 0, made.stderr
        return {"Authorization": f"Bearer {made.stdout.strip()}"}

    uploader, other = key("uploader"), key("other")
    server.start()
    try:
        assert requests.post(f"{server.url}/api/imports", data=b"x", params={"filename": "a.svs"}).status_code == 401
        r = requests.post(f"{server.url}/api/imports", data=cmu.read_bytes(), params={"filename": "cmu.svs"},
                          headers=uploader)
        assert r.status_code == 202, r.text
        assert requests.get(r.headers["Location"], headers=other).status_code == 404
        for _ in range(600):
            state = requests.get(r.headers["Location"], headers=uploader).json()
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert state["status"] == "done", state
        assert "owner" not in state and "pid" not in state
    finally:
        server.stop()
