"""POST /inference/depth-anything/scene and its jobs on the real app (tiny DA3 checkpoints):
per-view geometry in input pixels, point clouds that parse with readers not written here and
are the unprojection of the returned depth, given cameras, limits and bad input."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import plyfile
import pytest
import trimesh
from PIL import Image

pytest.register_assert_rewrite("conftest_jobs")  # before it is imported
from conftest_jobs import REDIS_URL, serve_app, settings_for, wait_for  # noqa: E402

from engines.families.depth_anything.maps import png_to_depth  # noqa: E402
from tests.conftest import assert_clear_error, asset_b64  # noqa: E402

pytest_plugins = ["conftest_jobs"]  # its fixtures: jobs_config, redis_client, redis_prefix

PATH = "/inference/depth-anything/scene"
# Different sizes and aspect ratios: views are cropped to one network size.
VIEWS = ["chelsea.jpg", "coffee.png", "astronaut.jpg"]


@pytest.fixture(scope="module")
def http(live_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server, timeout=300) as client:
        yield client


def scene(http: httpx.Client, names: list[str] = VIEWS, **options: Any) -> dict[str, Any]:
    response = http.post(PATH, json={"images": [asset_b64(n) for n in names], **options})
    assert response.status_code == 200, response.text
    return response.json()


def size_of(name: str) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(asset_b64(name)))) as image:
        return image.size


def rgb_of(name: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(asset_b64(name)))) as image:
        return np.asarray(image.convert("RGB"))


def test_every_view_has_depth_confidence_and_a_camera_in_its_input_pixels(
    http: httpx.Client,
) -> None:
    body = scene(http)
    assert body["model_type"] == "depth-anything" and body["variant"] == "tiny"
    assert body["engine"] == "torch" and body["point_cloud"] is None
    assert set(body["timings_ms"]) >= {"decode", "preprocess", "inference", "postprocess"}
    assert len(body["views"]) == len(VIEWS)
    for name, view in zip(VIEWS, body["views"], strict=True):
        width, height = size_of(name)
        assert (view["width"], view["height"]) == (width, height)
        depth = np.asarray(view["depth"])
        confidence = np.asarray(view["confidence"])
        assert depth.shape == confidence.shape == (height, width)
        assert (view["min"], view["max"]) == (depth.min(), depth.max())
        seen = confidence > 0  # the pixels the crop kept
        assert seen.mean() > 0.5 and (depth[seen] > 0).all() and (confidence[seen] >= 1).all()
        assert (depth[~seen] == 0).all()
        extrinsics = np.asarray(view["extrinsics"])
        assert extrinsics.shape == (3, 4)
        rotation = extrinsics[:, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-4)
        intrinsics = np.asarray(view["intrinsics"])
        assert intrinsics.shape == (3, 3) and intrinsics[2].tolist() == [0.0, 0.0, 1.0]
        assert intrinsics[0, 0] > 0 and intrinsics[1, 1] > 0
    # astronaut (square) is cropped to the 3:2 network size of chelsea and coffee: its top and
    # bottom rows were not seen; chelsea was seen whole.
    square = np.asarray(body["views"][2]["confidence"])
    assert (square[0] == 0).all() and (square[-1] == 0).all()
    assert (square[square.shape[0] // 2] > 0).all()
    assert (np.asarray(body["views"][0]["confidence"]) > 0).all()


def test_png_output_decodes_to_the_array_output(http: httpx.Client) -> None:
    arrays = scene(http, VIEWS[:2])
    pngs = scene(http, VIEWS[:2], output_format="png")
    for array_view, png_view in zip(arrays["views"], pngs["views"], strict=True):
        assert png_view["extrinsics"] == array_view["extrinsics"]
        for key, low, high in (
            ("depth", "min", "max"),
            ("confidence", "confidence_min", "confidence_max"),
        ):
            decoded = png_to_depth(png_view[key], png_view[low], png_view[high])
            expected = np.asarray(array_view[key])
            step = (png_view[high] - png_view[low]) / 65535
            np.testing.assert_allclose(decoded, expected, atol=step * 0.51 + 1e-6)


def unprojection_errors(points: np.ndarray, views: list[dict[str, Any]]) -> np.ndarray:
    """Per point, the smallest relative distance to the unprojection of the pixel it projects
    onto in some view (that pixel's returned depth along the returned camera's ray)."""
    best = np.full(len(points), np.inf)
    for view in views:
        depth = np.asarray(view["depth"])
        extrinsics = np.asarray(view["extrinsics"])
        intrinsics = np.asarray(view["intrinsics"])
        camera = points @ extrinsics[:, :3].T + extrinsics[:, 3]
        pixels = camera @ intrinsics.T
        z = pixels[:, 2]
        u = np.rint(pixels[:, 0] / z).astype(int)
        v = np.rint(pixels[:, 1] / z).astype(int)
        inside = (z > 0) & (u >= 0) & (u < view["width"]) & (v >= 0) & (v < view["height"])
        d = np.zeros(len(points))
        d[inside] = depth[v[inside], u[inside]]
        rays = np.stack([u, v, np.ones_like(u)], axis=1) @ np.linalg.inv(intrinsics).T
        unprojected_camera = rays * d[:, None]
        world = (unprojected_camera - extrinsics[:, 3]) @ extrinsics[:, :3]
        error = np.linalg.norm(world - points, axis=1) / np.maximum(np.abs(z), 1e-9)
        best = np.where(inside & (d > 0), np.minimum(best, error), best)
    return best


def test_a_ply_point_cloud_is_the_unprojection_of_the_returned_depth(
    http: httpx.Client,
) -> None:
    body = scene(http, point_cloud="ply", max_points=5000)
    cloud = body["point_cloud"]
    assert cloud["format"] == "ply" and 0 < cloud["points"] <= 5000
    np.testing.assert_array_equal(cloud["transform"], np.eye(4))
    ply = plyfile.PlyData.read(io.BytesIO(base64.b64decode(cloud["data"])))
    assert ply.header.startswith("ply") and "binary_little_endian" in ply.header
    vertex = ply["vertex"]
    points = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    colours = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1)
    assert len(points) == cloud["points"] and colours.dtype == np.uint8
    # Every point lies on the ray of the pixel it projects to, at that pixel's depth (float32
    # storage and pixel-centre rounding aside).
    assert np.percentile(unprojection_errors(points, body["views"]), 100) < 1e-3
    # The colours are the photos' colours.
    palette = {tuple(c) for name in VIEWS for c in rgb_of(name).reshape(-1, 3)[::1]}
    assert all(tuple(c) in palette for c in colours[:200])


def test_a_glb_scene_holds_the_points_and_one_frustum_per_camera(http: httpx.Client) -> None:
    ply_body = scene(http, point_cloud="ply", max_points=3000)
    body = scene(http, point_cloud="glb", max_points=3000)
    cloud = body["point_cloud"]
    assert cloud["format"] == "glb" and cloud["points"] == ply_body["point_cloud"]["points"]
    loaded = trimesh.load(io.BytesIO(base64.b64decode(cloud["data"])), file_type="glb")
    assert isinstance(loaded, trimesh.Scene)
    geometries = list(loaded.dump())
    clouds = [g for g in geometries if isinstance(g, trimesh.PointCloud)]
    assert len(clouds) == 1 and len(clouds[0].vertices) == cloud["points"]
    frusta = [g for g in geometries if not isinstance(g, trimesh.PointCloud)]
    assert len(frusta) == len(VIEWS)
    # The GLB's points are the PLY's world points moved by the returned transform.
    ply = plyfile.PlyData.read(io.BytesIO(base64.b64decode(ply_body["point_cloud"]["data"])))
    world = np.stack([ply["vertex"][k] for k in "xyz"], axis=1).astype(np.float64)
    moved = trimesh.transform_points(world, np.asarray(cloud["transform"]))
    np.testing.assert_allclose(
        np.sort(clouds[0].vertices, axis=0), np.sort(moved, axis=0), rtol=1e-4, atol=1e-4
    )


def test_given_cameras_are_returned_and_condition_the_depth(http: httpx.Client) -> None:
    free = scene(http, VIEWS[:2])
    extrinsics = [np.eye(4), np.eye(4)]
    extrinsics[1][:3, 3] = [0.5, 0.0, 0.1]  # the second camera 0.5 units to the side
    intrinsics = []
    for name in VIEWS[:2]:
        width, height = size_of(name)
        intrinsics.append([[600.0, 0, width / 2], [0, 600.0, height / 2], [0, 0, 1]])
    posed = scene(
        http,
        VIEWS[:2],
        extrinsics=[e.tolist() for e in extrinsics],
        intrinsics=intrinsics,
    )
    for view, e, k in zip(posed["views"], extrinsics, intrinsics, strict=True):
        np.testing.assert_allclose(view["extrinsics"], e[:3], atol=1e-9)
        np.testing.assert_allclose(view["intrinsics"], k, atol=1e-9)
    assert not np.allclose(posed["views"][0]["depth"], free["views"][0]["depth"])


def test_a_strip_visualization_has_one_row_per_view(http: httpx.Client) -> None:
    body = scene(http, visualize=True)
    with Image.open(io.BytesIO(base64.b64decode(body["visualization"]))) as strip:
        assert strip.format == "PNG" and strip.height == 256 * len(VIEWS)


def test_bad_scenes_are_clear_client_errors(http: httpx.Client) -> None:
    one = http.post(PATH, json={"images": [asset_b64("chelsea.jpg")]})
    assert one.status_code == 400 and "images" in one.text
    mono = http.post(
        PATH, json={"images": [asset_b64(n) for n in VIEWS[:2]], "variant": "tiny-mono"}
    )
    assert_clear_error(mono, 400, "predicts no cameras")
    identity = np.eye(4).tolist()
    counted = http.post(
        PATH,
        json={
            "images": [asset_b64(n) for n in VIEWS[:2]],
            "extrinsics": [identity],
            "intrinsics": [np.eye(3).tolist()],
        },
    )
    assert counted.status_code == 400 and "one per view" in counted.text
    lonely = http.post(
        PATH, json={"images": [asset_b64(n) for n in VIEWS[:2]], "extrinsics": [identity] * 2}
    )
    assert lonely.status_code == 400 and "together" in lonely.text
    strategy = http.post(
        PATH, json={"images": [asset_b64(n) for n in VIEWS[:2]], "ref_view_strategy": "best"}
    )
    assert strategy.status_code == 400 and "ref_view_strategy" in strategy.text
    unknown = http.post(PATH, json={"images": [asset_b64(n) for n in VIEWS[:2]], "variant": "x"})
    assert_clear_error(unknown, 404, "unknown variant")


def test_too_many_views_or_too_much_for_the_budget_is_a_413(http: httpx.Client) -> None:
    tiny = base64.b64encode(_png(32, 24)).decode()
    many = http.post(PATH, json={"images": [tiny] * 17})
    assert_clear_error(many, 413, "at most 16")
    # 2 views at process_res 1512 count as 18 views at 504 px; the CPU budget is 16.
    large = http.post(PATH, json={"images": [tiny] * 2, "process_res": 1512})
    assert_clear_error(large, 413, "scene_view_budget_cpu")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_scene_job_answers_what_the_endpoint_answers(
    jobs_config: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    env: dict[str, Any] = {"redis_url": ""}
    if backend == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        env = {"redis_url": REDIS_URL, "redis_key_prefix": prefix, "embedded_worker": "1"}
    body = {"images": [asset_b64(n) for n in VIEWS[:2]], "point_cloud": "ply", "max_points": 500}
    async with serve_app(settings_for(jobs_config, **env)) as client:
        sync = (await client.post(PATH, json=body)).json()
        accepted = await client.post("/jobs/submit/depth-anything-scene", json=body)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["model_type"] == "depth-anything-scene"
        job = await wait_for(client, accepted.json()["job_id"], timeout_s=120)
        assert job["status"] == "completed", job
        result = job["result"]
        assert result["views"] == sync["views"]
        assert result["point_cloud"] == sync["point_cloud"]
        bad = await client.post(
            "/jobs/submit/depth-anything-scene", json={"images": [asset_b64("chelsea.jpg")]}
        )
        assert bad.status_code == 400
