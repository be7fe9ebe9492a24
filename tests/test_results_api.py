"""The results JSON API over a real server: GeoJSON in and out, masks in, versions, queries, bad input."""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from slides import SlideSpec
from test_results_support import api, client, feature, post_mask, result_count, store_slide

WIDTH, HEIGHT = 1000, 700


@pytest.fixture(scope="module")
def slide(server, tmp_path_factory):
    return store_slide(server, tmp_path_factory.mktemp("slide"), SlideSpec(width=WIDTH, height=HEIGHT, tile=256))


@pytest.fixture(scope="module")
def other_slide(server, tmp_path_factory):
    spec = SlideSpec(width=600, height=400, tile=128, seed=7, patient_id="PAT-0002", accession="ACC-0002")
    return store_slide(server, tmp_path_factory.mktemp("other"), spec)


def _collection(features):
    return {"type": "FeatureCollection", "features": features}


def _post(server, series, features, **envelope):
    envelope.setdefault("algorithm", {"name": "cellfinder", "version": "1.0"})
    return api(server, "POST", f"/slides/{series}/annotations", {"geojson": _collection(features), **envelope})


def _by_group(features):
    out = {}
    for f in features:
        name = f["properties"].get("classification", {}).get("name", "Unclassified")
        key = (name, f["geometry"]["type"])
        out.setdefault(key, []).append(f)
    return out


def test_geojson_round_trip_exact(server, slide):
    _, series = slide
    sent = [
        feature("Point", [10, 20.5], "Tumor", {"Area": 1.5, "Perimeter": 7.25}),
        feature("Point", [0.1 + 0.2, 699.999999999], "Tumor", {"Area": 2.0}),  # float64 exactness
        feature("Polygon", [[[1, 1], [100, 1], [100, 50.25], [1, 1]]], "Stroma"),
        feature("LineString", [[0, 0], [1000, 700]], None),
    ]
    status, body = _post(server, series, sent, annotator=None)
    assert status == 201, body
    status, back = api(server, "GET", f"/slides/{series}/annotations?instance={body['sop_instance']}")
    assert status == 200
    got = _by_group(back["features"])
    want = _by_group(sent)
    for key in [("Tumor", "Point"), ("Stroma", "Polygon")]:
        assert [f["geometry"]["coordinates"] for f in got[key]] == [f["geometry"]["coordinates"] for f in want[key]]
    assert got[("Unclassified", "LineString")][0]["geometry"]["coordinates"] == [[0, 0], [1000, 700]]
    tumor = got[("Tumor", "Point")]
    assert tumor[0]["properties"]["measurements"] == {"Area": 1.5, "Perimeter": 7.25}
    assert tumor[1]["properties"]["measurements"] == {"Area": 2.0}  # missing Perimeter stays missing


def test_created_object_reads_back_with_highdicom_and_dicomweb_client(server, slide):
    study, series = slide
    sent = [feature("Polygon", [[[5, 5], [50, 5], [50, 60], [5, 5]]], "Tumor")]
    status, body = _post(server, series, sent)
    assert status == 201, body
    ds = client(server).retrieve_instance(body["study"], body["series"], body["sop_instance"])
    ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds)
    assert ann.annotation_coordinate_type.value == "2D"
    group = ann.get_annotation_groups()[0]
    assert group.label == "Tumor"
    assert group.algorithm_identification[0].AlgorithmName == "cellfinder"
    assert np.array_equal(group.get_graphic_data("2D")[0], [[5, 5], [50, 5], [50, 60]])
    assert ds.StudyInstanceUID == study
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series


def test_100k_points_round_trip_geojson_and_bulkdata(server, slide):
    _, series = slide
    rng = np.random.default_rng(5)
    xy = np.column_stack([rng.uniform(0, WIDTH, 100_000), rng.uniform(0, HEIGHT, 100_000)])
    sent = [feature("Point", p, "Lymphocyte") for p in xy.tolist()]
    status, body = _post(server, series, sent, algorithm={"name": "lymphfinder", "version": "3"})
    assert status == 201, body
    status, back = api(server, "GET", f"/slides/{series}/annotations?instance={body['sop_instance']}")
    got = np.array([f["geometry"]["coordinates"] for f in back["features"]])
    assert np.array_equal(got, xy)
    c = client(server)
    meta = c.retrieve_instance_metadata(body["study"], body["series"], body["sop_instance"])
    group = meta["006A0002"]["Value"][0]
    assert group["006A000C"]["Value"] == [100_000]
    data = c.retrieve_bulkdata(group["00660022"]["BulkDataURI"])[0]
    assert np.array_equal(np.frombuffer(data, "<f8").reshape(-1, 2), xy)


def test_polygon_bulkdata_point_index_list(server, slide):
    _, series = slide
    polys = [[[i, 0], [i + 1, 0], [i + 1, 3.5], [i, 0]] for i in range(0, 900, 3)]
    status, body = _post(server, series, [feature("Polygon", [p], "Cell") for p in polys])
    assert status == 201
    c = client(server)
    meta = c.retrieve_instance_metadata(body["study"], body["series"], body["sop_instance"])
    group = meta["006A0002"]["Value"][0]
    index = np.frombuffer(c.retrieve_bulkdata(group["00660040"]["BulkDataURI"])[0], "<i4")
    assert index.tolist() == [1 + 6 * i for i in range(len(polys))]  # 3 points x 2 values each, 1-based
    coords = np.frombuffer(c.retrieve_bulkdata(group["00660022"]["BulkDataURI"])[0], "<f8").reshape(-1, 3, 2)
    assert np.array_equal(coords, np.array([p[:-1] for p in polys], dtype=float))


@pytest.mark.parametrize("geojson, needle", [
    ({"type": "FeatureCollection"}, "FeatureCollection"),
    (_collection([{"type": "Feature", "geometry": {"type": "Circle", "coordinates": [1, 2]}}]), "not supported"),
    (_collection([feature("Point", [WIDTH + 1, 5], "Tumor")]), "outside the slide"),
    (_collection([feature("Point", [-0.5, 5], "Tumor")]), "outside the slide"),
    (_collection([feature("Polygon", [[[1, 1], [2, 1], [2, 2]]], "Tumor")]), "closed"),
    (_collection([feature("Polygon", [[[1, 1], [9, 1], [9, 9], [1, 1]], [[2, 2], [3, 2], [3, 3], [2, 2]]])]), "holes"),
    (_collection([feature("Point", ["a", 5], "Tumor")]), "coordinates"),
    (_collection([feature("Point", [1, 2, 3], "Tumor")]), "2D"),
    (_collection([feature("Point", [1, 2], "T" * 65)]), "64 characters"),
    (_collection([feature("Point", [1, 2], "Tumor", {"Area": "big"})]), "numbers"),
])
def test_bad_geojson_refused_nothing_stored(server, slide, geojson, needle):
    _, series = slide
    before = result_count(server, series)
    status, body = api(server, "POST", f"/slides/{series}/annotations",
                       {"geojson": geojson, "algorithm": {"name": "x", "version": "1"}})
    assert status == 400, body
    assert needle in body["message"]
    assert result_count(server, series) == before


def test_bad_requests(server, slide):
    _, series = slide
    status, body = api(server, "POST", f"/slides/{series}/annotations", b"{not json")
    assert status == 400 and "JSON" in body["message"]
    status, body = api(server, "POST", f"/slides/{series}/annotations", {"geojson": _collection([])})
    assert status == 400 and "or an annotator" in body["message"]
    status, body = api(server, "POST", "/slides/1.2.3.999/annotations",
                       {"geojson": _collection([feature("Point", [1, 1])]), "annotator": "Doe^J"})
    assert status == 404
    status, body = api(server, "GET", "/results?min_count=many")
    assert status == 400


def test_bare_geojson_with_query_parameters(server, slide):
    _, series = slide
    status, body = api(server, "POST", f"/slides/{series}/annotations?annotator=Pathologist%5EA",
                       _collection([feature("Point", [3, 4], "Mitosis")]), "application/geo+json")
    assert status == 201, body
    status, found = api(server, "GET", f"/slides/{series}/results")
    mine = next(r for r in found["results"] if r["sop_instance"] == body["sop_instance"])
    assert mine["algorithm"] is None and mine["creator"] == "Pathologist^A"
    assert mine["groups"][0]["algorithm_type"] == "MANUAL"


def test_versioning_keeps_old_results(server, other_slide):
    _, series = other_slide
    uids = []
    for version in ("1", "2", "3"):
        status, body = _post(server, series, [feature("Point", [1, 1], "Tumor")],
                             algorithm={"name": "versioned", "version": version})
        assert status == 201
        uids.append(body["sop_instance"])
    status, found = api(server, "GET", f"/slides/{series}/results")
    versioned = {r["sop_instance"]: r for r in found["results"] if r["algorithm"]["name"] == "versioned"}
    assert set(versioned) == set(uids)
    assert [versioned[u]["current"] for u in uids] == [False, False, True]
    status, current = api(server, "GET", f"/slides/{series}/annotations")
    assert {f["properties"]["dicom"]["instance"] for f in current["features"]} == {uids[2]}
    status, everything = api(server, "GET", f"/slides/{series}/annotations?all=1")
    assert {f["properties"]["dicom"]["instance"] for f in everything["features"]} == set(uids)
    old = versioned[uids[0]]
    ds = client(server).retrieve_instance(old["study"], old["series"], old["sop_instance"])  # still retrievable
    assert ds.SOPInstanceUID == uids[0]
    status, q = api(server, "GET", "/results?algorithm=versioned&version=1")
    assert q["slides"] == []  # version 1 is superseded
    status, q = api(server, "GET", "/results?algorithm=versioned&version=1&include_superseded=1")
    assert [s["series"] for s in q["slides"]] == [series]
    newest = versioned[uids[2]]
    client(server).delete_instance(newest["study"], newest["series"], newest["sop_instance"])
    status, found = api(server, "GET", f"/slides/{series}/results")
    now = {r["sop_instance"]: r["current"] for r in found["results"] if r["algorithm"]["name"] == "versioned"}
    assert now == {uids[0]: False, uids[1]: True}  # deleting the newest makes the previous one current


def test_link_queries_across_slides(server, slide, other_slide):
    _, a = slide
    _, b = other_slide
    _post(server, a, [feature("Point", [i, 1], "Neutrophil") for i in range(30)],
          algorithm={"name": "granulo", "version": "1", "family": "AI"})
    _post(server, b, [feature("Point", [i, 1], "Neutrophil") for i in range(5)],
          algorithm={"name": "granulo", "version": "1"})
    status, q = api(server, "GET", "/results?algorithm=granulo")
    assert sorted(s["series"] for s in q["slides"]) == sorted([a, b])
    status, q = api(server, "GET", "/results?property_type=neutrophil&min_count=10")
    assert [s["series"] for s in q["slides"]] == [a]
    status, q = api(server, "GET", "/results?property_type=Neutrophil&min_count=31")
    assert q["slides"] == []


def _tiles(mask: np.ndarray, tile: int) -> list[np.ndarray]:
    rows, cols = -(-mask.shape[0] // tile), -(-mask.shape[1] // tile)
    padded = np.zeros((rows * tile, cols * tile), mask.dtype)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return [padded[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for r in range(rows) for c in range(cols)]


def _mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[100:300, 200:520] = 1
    mask[420:690, 610:990] = 2
    return mask


@pytest.mark.parametrize("tiling, tile", [("full", 50), ("sparse", 50), ("full", None), ("sparse", None)])
def test_binary_segmentation_frames(server, slide, tiling, tile):
    """1-bit frames: tile 50 gives 2500-bit frames (the core's 'bits' layout), 256 byte-aligned ones."""
    _, series = slide
    mask = _mask()
    status, body = post_mask(server, series, mask, {
        "segments": [{"label": "Tumor"}, {"label": "Stroma"}], "type": "BINARY", "tiling": tiling, "tile": tile,
        "algorithm": {"name": "segger", "version": "2"}})
    assert status == 201, body
    c = client(server)
    ds = c.retrieve_instance(body["study"], body["series"], body["sop_instance"])
    seg = hd.seg.Segmentation.from_dataset(ds)
    assert ds.DimensionOrganizationType == ("TILED_FULL" if tiling == "full" else "TILED_SPARSE")
    assert np.array_equal(seg.get_total_pixel_matrix(combine_segments=True), mask)
    size = tile or 256
    n = int(ds.NumberOfFrames)
    frames = c.retrieve_instance_frames(body["study"], body["series"], body["sop_instance"],
                                        list(range(1, n + 1)), media_types=("application/octet-stream",))
    for i, data in enumerate(frames, 1):
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: size * size].reshape(size, size)
        assert np.array_equal(bits, seg.get_stored_frame(i)), i
    if tiling == "full":
        tiles = _tiles(mask, size)
        assert n == 2 * len(tiles)
        assert all(np.array_equal(seg.get_stored_frame(k + 1), t == 1) for k, t in enumerate(tiles))


def test_fractional_and_labelmap_segmentations(server, slide):
    _, series = slide
    prob = (np.arange(WIDTH * HEIGHT) % 256).astype(np.uint8).reshape(HEIGHT, WIDTH)
    status, body = post_mask(server, series, prob, {"segments": [{"label": "Tumor probability"}],
                                                    "type": "FRACTIONAL", "tiling": "full"})
    assert status == 201, body
    c = client(server)
    frame = c.retrieve_instance_frames(body["study"], body["series"], body["sop_instance"], [2],
                                       media_types=("application/octet-stream",))[0]
    assert np.array_equal(np.frombuffer(frame, np.uint8).reshape(256, 256), _tiles(prob, 256)[1])
    mask = _mask()
    status, body = post_mask(server, series, mask, {"segments": [{"label": "Tumor"}, {"label": "Stroma"}],
                                                    "type": "LABELMAP", "tiling": "full"})
    assert status == 201, body
    ds = c.retrieve_instance(body["study"], body["series"], body["sop_instance"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    frames = c.retrieve_instance_frames(body["study"], body["series"], body["sop_instance"], list(range(1, 13)),
                                        media_types=("application/octet-stream",))
    for data, expected in zip(frames, _tiles(mask, 256)):
        assert np.array_equal(np.frombuffer(data, np.uint8).reshape(256, 256), expected)
    status, q = api(server, "GET", f"/slides/{series}/results")
    assert {"SEG"} <= {r["kind"] for r in q["results"]}


@pytest.mark.parametrize("meta, shape, needle", [
    ({"segments": [{"label": "Tumor"}]}, (HEIGHT, WIDTH - 1), "the level is"),
    ({"segments": [{"label": "Tumor"}], "level": 1}, (HEIGHT, WIDTH), "the level is"),
    ({"segments": [{"label": "Tumor"}], "level": 9}, (HEIGHT, WIDTH), "level must be"),
    ({"segments": []}, (HEIGHT, WIDTH), "segments"),
    ({"segments": [{"label": "Tumor"}], "type": "NOPE"}, (HEIGHT, WIDTH), "type must be"),
])
def test_bad_masks_refused_nothing_stored(server, slide, meta, shape, needle):
    _, series = slide
    before = result_count(server, series)
    mask = np.zeros(shape, np.uint8)
    mask[:10, :10] = 1
    status, body = post_mask(server, series, mask, meta)
    assert status == 400, body
    assert needle in body["message"]
    assert result_count(server, series) == before


def test_mask_at_a_lower_level(server, slide):
    _, series = slide
    mask = np.zeros((HEIGHT // 2, WIDTH // 2), np.uint8)
    mask[10:100, 10:100] = 1
    status, body = post_mask(server, series, mask, {"segments": [{"label": "Tumor"}], "level": 1})
    assert status == 201, body
    ds = client(server).retrieve_instance(body["study"], body["series"], body["sop_instance"])
    assert (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (WIDTH // 2, HEIGHT // 2)


def test_multipoint_becomes_points(server, other_slide):
    _, series = other_slide
    status, body = _post(server, series, [feature("MultiPoint", [[1, 2], [3, 4.5]], "Mitosis")])
    assert status == 201, body
    status, back = api(server, "GET", f"/slides/{series}/annotations?instance={body['sop_instance']}")
    assert [f["geometry"] for f in back["features"]] == [{"type": "Point", "coordinates": [1.0, 2.0]},
                                                         {"type": "Point", "coordinates": [3.0, 4.5]}]


def test_rgb_mask_refused(server, slide):
    _, series = slide
    before = result_count(server, series)
    status, body = post_mask(server, series, np.zeros((HEIGHT, WIDTH, 3), np.uint8), {"segments": [{"label": "T"}]})
    assert status == 400 and "single-channel" in body["message"]
    assert result_count(server, series) == before


def test_geojson_without_orjson_matches(server, slide):
    """The plain-json fallback (nested lists) gives the same Features as the server's streamed answer."""
    import json

    from archive.results.annotations import to_features

    _, series = slide
    sent = [feature("Polygon", [[[1.5, 1], [9, 1], [9, 9.25], [1.5, 1]]], "Tumor", {"Area": 3.0}),
            feature("Point", [7, 8], "Tumor", {"Area": 1.0})]
    status, body = _post(server, series, sent)
    status, back = api(server, "GET", f"/slides/{series}/annotations?instance={body['sop_instance']}")
    ds = client(server).retrieve_instance(body["study"], body["series"], body["sop_instance"])
    assert json.loads(json.dumps(to_features(ds))) == back["features"]
