"""``vision_client`` against the real server (``live_server``, tiny checkpoints): every endpoint
and output format round-trips, jobs wait, errors carry status and detail; sync and async."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import plyfile
import pytest
import trimesh
from PIL import Image

from engines.families.depth_anything.scene import STRIP_ROW_HEIGHT
from engines.masks import decode_mask as server_decode_mask
from tests.conftest import ASSETS
from vision_client import AsyncVisionClient, SceneView, VisionAPIError, VisionClient
from vision_client.client import job_response
from vision_client.results import DepthSceneResponse, Sam3Response

PHOTO = ASSETS / "chelsea.jpg"
# Three sizes and two aspect ratios: the server crops the views to one network size.
SCENE = [ASSETS / "chelsea.jpg", ASSETS / "coffee.png", ASSETS / "astronaut.jpg"]


@pytest.fixture()
def client(live_server: str) -> Iterator[VisionClient]:
    with VisionClient(live_server) as client:
        yield client


def _sam3(client: VisionClient, fmt: str) -> Sam3Response:
    return client.sam3(PHOTO, ["cat"], threshold=0.0, mask_threshold=0.5, output_format=fmt)


def test_sam3_masks_decode_equal_across_formats(client: VisionClient) -> None:
    dense = _sam3(client, "dense").results[0]
    assert dense.instances, "threshold 0 keeps every query"
    reference = dense.masks()
    assert reference.shape == (len(dense.instances), dense.height, dense.width)
    assert reference.dtype == bool
    assert [int(m.sum()) for m in reference] == [i.area for i in dense.instances]
    for fmt in ("rle", "png"):
        result = _sam3(client, fmt).results[0]
        np.testing.assert_array_equal(result.masks(), reference)
    polygon = _sam3(client, "polygon").results[0]
    for instance, mask in zip(polygon.instances, polygon.masks(), strict=True):
        # The polygon is a simplified outline: same as the server's own fill, up to the edge
        # pixels the two rasterisers disagree on.
        expected = server_decode_mask(instance.mask, "polygon", polygon.height, polygon.width)
        union = np.logical_or(mask, expected).sum()
        assert union == 0 or np.logical_and(mask, expected).sum() / union > 0.8


def test_rle_decode_matches_pycocotools(client: VisionClient) -> None:
    result = _sam3(client, "rle").results[0]
    for instance, mask in zip(result.instances, result.masks(), strict=True):
        rle = {"size": instance.mask["size"], "counts": instance.mask["counts"]}
        expected = server_decode_mask(rle, "rle", result.height, result.width)
        np.testing.assert_array_equal(mask, expected)


def test_image_kinds_give_the_same_answer(client: VisionClient) -> None:
    pixels = np.asarray(Image.open(ASSETS / "chelsea.png").convert("RGB"))
    answers = [
        client.dinov3(image).results[0].embedding
        for image in (
            ASSETS / "chelsea.png",
            str(ASSETS / "chelsea.png"),
            (ASSETS / "chelsea.png").read_bytes(),
            Image.fromarray(pixels),
            pixels,
            {"data": base64.b64encode((ASSETS / "chelsea.png").read_bytes()).decode()},
        )
    ]
    for other in answers[1:]:
        np.testing.assert_allclose(other, answers[0], atol=1e-5)


def test_sam3_embed_then_image_id(client: VisionClient) -> None:
    embedded = client.sam3_embed([PHOTO])
    assert len(embedded.image_ids) == 1 and embedded.expires_in_s > 0
    by_id = client.sam3([{"image_id": embedded.image_ids[0]}], ["cat"], threshold=0.0)
    by_pixels = client.sam3(PHOTO, ["cat"], threshold=0.0)
    np.testing.assert_array_equal(by_id.results[0].masks(), by_pixels.results[0].masks())


def test_grounding_dino(client: VisionClient) -> None:
    response = client.grounding_dino([PHOTO, PHOTO], ["a cat"], box_threshold=0.0)
    assert response.model_type == "grounding-dino" and len(response.results) == 2
    for detection in response.results[0].detections:
        assert detection.label == "a cat" and len(detection.box) == 4


def test_depth_png_decodes_back_within_quantisation(client: VisionClient) -> None:
    array = client.depth(PHOTO, output_format="array").results[0]
    png = client.depth(PHOTO, output_format="png").results[0]
    reference = array.array()
    assert reference.shape == (array.height, array.width) and reference.dtype == np.float32
    decoded = png.array()
    step = (png.max - png.min) / 65535
    assert np.abs(decoded - reference).max() <= step + 1e-5 * max(abs(png.max), 1.0)
    assert decoded.min() == pytest.approx(png.min, abs=1e-5)


def test_dinov3_patch_features(client: VisionClient) -> None:
    result = client.dinov3(PHOTO, pooling="mean", return_patch_features=True).results[0]
    embedding = result.embedding_array()
    assert embedding is not None and embedding.shape == (result.dim,)
    assert result.patch_features is not None
    features = result.patch_features.array()
    assert features.shape == (*result.patch_features.grid, result.patch_features.dim)


def test_model_management(client: VisionClient) -> None:
    assert client.health()["status"]
    statuses = client.models_status()
    assert {s.model_type for s in statuses} >= {"sam3", "dinov3"}
    loaded = client.load_model("dinov3")
    assert loaded.loaded and loaded.model_type == "dinov3"
    unloaded = client.unload_model("dinov3")
    assert [(r.model_type, r.variant) for r in unloaded.unloaded] == [("dinov3", loaded.variant)]
    assert not next(s for s in client.models_status() if s.variant == loaded.variant).loaded


def test_jobs_round_trip(client: VisionClient) -> None:
    job = client.submit_job("sam3", images=[PHOTO], prompts=["cat"], threshold=0.0)
    info = job.wait(timeout_s=120)
    assert info.status == "completed", info.error
    response = job_response(info)
    assert isinstance(response, Sam3Response)
    direct = client.sam3(PHOTO, ["cat"], threshold=0.0)
    np.testing.assert_array_equal(response.results[0].masks(), direct.results[0].masks())
    assert job.job_id in {j.job_id for j in client.list_jobs(status="completed").jobs}
    client.delete_job(job.job_id)
    with pytest.raises(VisionAPIError) as raised:
        client.get_job(job.job_id)
    assert raised.value.status == 404


def test_errors_carry_status_and_detail(client: VisionClient) -> None:
    with pytest.raises(VisionAPIError) as raised:
        client.sam3(PHOTO, ["cat"], variant="no-such-variant")
    assert raised.value.status == 404 and "no-such-variant" in raised.value.detail
    with pytest.raises(VisionAPIError) as raised:
        client.sam3(PHOTO, [], threshold=0.5)
    assert raised.value.status == 400 and raised.value.detail
    assert raised.value.errors
    broken = io.BytesIO(b"not an image")
    with pytest.raises(VisionAPIError) as raised:
        client.dinov3(broken.getvalue())
    assert raised.value.status == 400 and "Traceback" not in raised.value.detail


def test_async_client(live_server: str) -> None:
    async def scenario() -> None:
        async with AsyncVisionClient(live_server) as client:
            sam3, depth = await asyncio.gather(
                client.sam3(PHOTO, ["cat"], threshold=0.0, output_format="rle"),
                client.depth(PHOTO, output_format="png"),
            )
            assert sam3.results[0].masks().shape[0] == len(sam3.results[0].instances)
            assert depth.results[0].array().shape == (
                depth.results[0].height,
                depth.results[0].width,
            )
            embedded = await client.sam3_embed(PHOTO)
            assert embedded.image_ids
            assert (await client.grounding_dino(PHOTO, ["a cat"])).results
            assert (await client.dinov3(PHOTO)).results[0].embedding
            assert (await client.health())["status"]
            assert await client.models_status()
            assert (await client.load_model("dinov3")).loaded
            assert (await client.unload_model("dinov3")).unloaded
            job = await client.submit_job("dinov3", images=[PHOTO])
            info = await job.wait(timeout_s=120)
            assert info.status == "completed", info.error
            assert job_response(info).model_type == "dinov3"
            assert (await client.list_jobs(limit=5)).total >= 1
            await client.delete_job(job.job_id)
            with pytest.raises(VisionAPIError) as raised:
                await client.get_job(job.job_id)
            assert raised.value.status == 404

    asyncio.run(scenario())


def test_visualizations_decode_to_images(client: VisionClient) -> None:
    sam3 = client.sam3(PHOTO, ["cat"], threshold=0.0, visualize=True).results[0]
    overlay = sam3.visualization_image()
    assert overlay is not None and overlay.size == (sam3.width, sam3.height)
    assert client.sam3(PHOTO, ["cat"]).results[0].visualization_image() is None
    boxes = client.grounding_dino(PHOTO, ["a cat"], visualize=True).results[0]
    assert boxes.visualization_image() is not None
    depth = client.depth(PHOTO, visualize=True).results[0]
    picture = depth.visualization_image()
    assert picture is not None and picture.size == (2 * depth.width, depth.height)
    features = client.dinov3(PHOTO, visualize=True).results[0]
    assert features.visualization_image() is not None


def _ply_points(path: Path) -> np.ndarray:
    vertex = plyfile.PlyData.read(path)["vertex"]
    return np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)


def _depth_gaps(points: np.ndarray, views: list[SceneView]) -> np.ndarray:
    """Per point, the smallest relative gap, over the views that see it, between its depth in
    the view's camera and the view's decoded depth at the pixel it projects to."""
    best = np.full(len(points), np.inf)
    for view in views:
        extrinsics = view.extrinsics_matrix()
        camera = points @ extrinsics[:3, :3].T + extrinsics[:3, 3]
        pixels = camera @ view.intrinsics_matrix().T
        z = camera[:, 2]
        u = np.rint(pixels[:, 0] / z).astype(int)
        v = np.rint(pixels[:, 1] / z).astype(int)
        inside = (z > 0) & (u >= 0) & (u < view.width) & (v >= 0) & (v < view.height)
        gap = np.full(len(points), np.inf)
        gap[inside] = np.abs(view.depth_array()[v[inside], u[inside]] - z[inside]) / z[inside]
        best = np.minimum(best, gap)
    return best


def test_depth_scene_ply_png_and_given_cameras(client: VisionClient, tmp_path: Path) -> None:
    scene = client.depth_scene(SCENE[:2], point_cloud="ply", max_points=2000)
    assert scene.model_type == "depth-anything" and len(scene.views) == 2
    cloud = scene.point_cloud
    assert cloud is not None and cloud.format == "ply"
    np.testing.assert_array_equal(cloud.transform_matrix(), np.eye(4))
    path = cloud.save(tmp_path / "scene.ply")
    assert path.read_bytes() == cloud.bytes()
    points = _ply_points(path)
    assert 0 < len(points) == cloud.points <= 2000
    # The matrices and decoded depth are the ones the server unprojected: every point lies at
    # the depth of the pixel it projects to (float32 storage aside).
    assert _depth_gaps(points, scene.views).max() < 1e-3
    for view in scene.views:
        centre = np.append(view.camera_centre(), 1.0)
        np.testing.assert_allclose(view.extrinsics_matrix() @ centre, [0, 0, 0, 1], atol=1e-6)

    png = client.depth_scene(SCENE[:2], output_format="png")
    for array_view, png_view in zip(scene.views, png.views, strict=True):
        assert isinstance(png_view.depth, str) and png_view.extrinsics == array_view.extrinsics
        for decoded, expected, low, high in (
            (png_view.depth_array(), array_view.depth_array(), png_view.min, png_view.max),
            (
                png_view.confidence_array(),
                array_view.confidence_array(),
                png_view.confidence_min,
                png_view.confidence_max,
            ),
        ):
            assert decoded.shape == (png_view.height, png_view.width)
            step = (high - low) / 65535
            np.testing.assert_allclose(decoded, expected, rtol=0, atol=step / 2 + 1e-6 * high)

    # The returned cameras sent back, as numpy and 3x4: the answer is in their frame.
    posed = client.depth_scene(
        SCENE[:2],
        extrinsics=np.stack([np.asarray(v.extrinsics) for v in scene.views]),
        intrinsics=[v.intrinsics_matrix() for v in scene.views],
    )
    for given, view in zip(scene.views, posed.views, strict=True):
        np.testing.assert_allclose(view.extrinsics, given.extrinsics, atol=1e-9)
        np.testing.assert_allclose(view.intrinsics, given.intrinsics, atol=1e-9)


def test_async_depth_scene_glb_and_its_job(live_server: str, tmp_path: Path) -> None:
    sizes = [Image.open(path).size for path in SCENE]

    async def scenario() -> None:
        async with AsyncVisionClient(live_server) as client:
            direct = await client.depth_scene(
                SCENE, point_cloud="glb", max_points=2000, visualize=True
            )
            for (width, height), view in zip(sizes, direct.views, strict=True):
                depth, confidence = view.depth_array(), view.confidence_array()
                assert (view.width, view.height) == (width, height)
                assert depth.shape == confidence.shape == (height, width)
                assert (depth[confidence == 0] == 0).all() and (confidence >= 0).all()
            # The square view was cropped to the others' 3:2 network size.
            assert (direct.views[2].confidence_array()[0] == 0).all()
            strip = direct.visualization_image()
            assert strip is not None and strip.height == STRIP_ROW_HEIGHT * len(SCENE)
            cloud = direct.point_cloud
            assert cloud is not None and cloud.format == "glb" and cloud.bytes()[:4] == b"glTF"
            loaded = trimesh.load(cloud.save(tmp_path / "scene.glb"))
            clouds = [g for g in loaded.geometry.values() if isinstance(g, trimesh.PointCloud)]
            assert [len(c.vertices) for c in clouds] == [cloud.points]
            assert cloud.transform_matrix()[3].tolist() == [0.0, 0.0, 0.0, 1.0]

            job = await client.submit_job("depth-anything-scene", images=SCENE, max_points=2000)
            info = await job.wait(timeout_s=300)
            assert info.status == "completed", info.error
            queued = job_response(info)
            assert isinstance(queued, DepthSceneResponse) and queued.point_cloud is None
            for a, b in zip(queued.views, direct.views, strict=True):
                np.testing.assert_allclose(a.depth_array(), b.depth_array(), rtol=1e-5)
                np.testing.assert_allclose(a.extrinsics, b.extrinsics, atol=1e-5)

    asyncio.run(scenario())
