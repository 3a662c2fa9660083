"""Pose normalisation and Umeyama alignment against the reference package, and on their own.

The oracle tests need ``requirements-oracle.txt`` (``depth_anything_3`` and ``evo``) and are
skipped without it; the property tests always run.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from engines.errors import InvalidInputError
from engines.families.depth_anything.da3.align import (
    RANSAC_MIN_VIEWS,
    align_poses_umeyama,
    normalize_extrinsics,
)


def random_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def poses(rotations: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[N, 4, 4] camera-to-world."""
    out = np.tile(np.eye(4), (len(rotations), 1, 1))
    out[:, :3, :3], out[:, :3, 3] = rotations, centres
    return out


def random_extrinsics(rng: np.random.Generator, count: int) -> np.ndarray:
    """[N, 4, 4] world-to-camera."""
    return np.linalg.inv(poses(random_rotations(rng, count), rng.normal(size=(count, 3)) * 3))


def similar_extrinsics(
    extrinsics: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: float
) -> np.ndarray:
    """The cameras moved by ``x → scale * rotation @ x + translation``, as world-to-camera."""
    camera_to_world = np.linalg.inv(extrinsics)
    moved = poses(
        rotation @ camera_to_world[:, :3, :3],
        scale * camera_to_world[:, :3, 3] @ rotation.T + translation,
    )
    return np.linalg.inv(moved)


def scene(
    seed: int, count: int, noise: float, outliers: int
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, float]]:
    """Given cameras, and predicted ones: a similarity of them, plus noise and outlier views."""
    rng = np.random.default_rng(seed)
    given = random_extrinsics(rng, count)
    truth = (random_rotations(rng, 1)[0], rng.normal(size=3), float(rng.uniform(0.2, 5.0)))
    predicted = similar_extrinsics(given, *truth)
    predicted[:, :3, 3] += rng.normal(size=(count, 3)) * noise
    predicted[:outliers, :3, 3] += rng.normal(size=(outliers, 3)) * 20
    return predicted, given, truth


# ---------------------------------------------------------------- against the reference


@pytest.fixture(scope="module")
def pose_align() -> ModuleType:
    pytest.importorskip("depth_anything_3")
    pytest.importorskip("evo")
    from depth_anything_3.utils import pose_align

    return pose_align


def reference_function(module: str, name: str, namespace: dict[str, Any]) -> Any:
    """A function's definition from a reference module that does not import here (api.py)."""
    package = pytest.importorskip("depth_anything_3")
    source = (Path(next(iter(package.__path__))) / module).read_text()
    (node,) = [n for n in ast.walk(ast.parse(source)) if getattr(n, "name", None) == name]
    exec(compile(ast.Module(body=[node], type_ignores=[]), module, "exec"), namespace)
    return namespace[name]


CASES = [  # (seed, views, noise, outlier views, ransac)
    (0, 3, 0.0, 0, False),
    (1, 6, 0.0, 0, False),
    (2, 8, 0.3, 2, False),
    (3, 12, 0.0, 0, False),
    (4, 10, 0.05, 0, True),
    (5, 12, 0.05, 3, True),
    (6, 16, 0.5, 4, True),
    (7, 40, 0.02, 10, True),
]


@pytest.mark.parametrize(("seed", "count", "noise", "outliers", "ransac"), CASES)
def test_alignment_equals_reference(
    pose_align: ModuleType, seed: int, count: int, noise: float, outliers: int, ransac: bool
) -> None:
    predicted, given, _ = scene(seed, count, noise, outliers)
    expected = pose_align.align_poses_umeyama(
        predicted, given, return_aligned=True, ransac=ransac, random_state=42
    )
    rotation, translation, scale, aligned = align_poses_umeyama(predicted, given, ransac=ransac)
    np.testing.assert_allclose(rotation, expected[0], atol=1e-10)
    np.testing.assert_allclose(translation, expected[1], atol=1e-10)
    assert scale == pytest.approx(expected[2], rel=1e-12)
    assert aligned.shape == (count, 3, 4)
    np.testing.assert_allclose(aligned, expected[3][:, :3], atol=1e-10)


def test_alignment_of_unrelated_cameras_equals_reference(pose_align: ModuleType) -> None:
    rng = np.random.default_rng(11)
    for count in (5, 13):
        predicted, given = random_extrinsics(rng, count), random_extrinsics(rng, count)
        for ransac, seed in ((False, 42), (True, 42), (True, 7)):
            expected = pose_align.align_poses_umeyama(
                predicted, given, return_aligned=True, ransac=ransac, random_state=seed
            )
            ours = align_poses_umeyama(predicted, given, ransac=ransac, random_state=seed)
            for mine, theirs in zip(ours[:3], expected[:3], strict=True):
                np.testing.assert_allclose(mine, theirs, atol=1e-10)
            np.testing.assert_allclose(ours[3], expected[3][:, :3], atol=1e-10)


def test_three_by_four_extrinsics_equal_reference(pose_align: ModuleType) -> None:
    predicted, given, _ = scene(8, 12, 0.1, 2)
    expected = pose_align.align_poses_umeyama(
        predicted[:, :3], given[:, :3], return_aligned=True, ransac=True, random_state=42
    )
    ours = align_poses_umeyama(predicted[:, :3], given[:, :3], ransac=True)
    np.testing.assert_allclose(ours[2], expected[2], rtol=1e-12)
    np.testing.assert_allclose(ours[3], expected[3][:, :3], atol=1e-10)


@pytest.mark.parametrize("count", [1, 2, 5, 8])
def test_normalize_extrinsics_equals_reference(count: int) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("depth_anything_3")
    from depth_anything_3.utils.geometry import affine_inverse

    reference = reference_function(
        "api.py", "_normalize_extrinsics", {"torch": torch, "affine_inverse": affine_inverse}
    )
    extrinsics = random_extrinsics(np.random.default_rng(count), count)
    expected = reference(None, torch.from_numpy(extrinsics)[None])[0].numpy()
    np.testing.assert_allclose(normalize_extrinsics(extrinsics), expected, atol=1e-12)


# ---------------------------------------------------------------- on their own


@pytest.mark.parametrize("ransac", [False, True])
def test_known_similarity_is_recovered(ransac: bool) -> None:
    predicted, given, (rotation, translation, scale) = scene(21, 12, 0.0, 0)
    found = align_poses_umeyama(predicted, given, ransac=ransac)
    np.testing.assert_allclose(found[0], rotation, atol=1e-9)
    np.testing.assert_allclose(found[1], translation, atol=1e-9)
    assert found[2] == pytest.approx(scale, rel=1e-9)
    np.testing.assert_allclose(found[3], predicted[:, :3], atol=1e-9)


def test_ransac_ignores_an_outlier_view() -> None:
    predicted, given, (rotation, translation, scale) = scene(22, RANSAC_MIN_VIEWS + 2, 0.0, 1)
    plain = align_poses_umeyama(predicted, given, ransac=False)
    robust = align_poses_umeyama(predicted, given, ransac=True)
    assert abs(plain[2] - scale) > 1e-3  # the outlier pulls the plain fit
    np.testing.assert_allclose(robust[0], rotation, atol=1e-9)
    np.testing.assert_allclose(robust[1], translation, atol=1e-9)
    assert robust[2] == pytest.approx(scale, rel=1e-9)
    np.testing.assert_allclose(robust[3][1:], predicted[1:, :3], atol=1e-9)


def test_ransac_is_deterministic_for_a_seed() -> None:
    predicted, given, _ = scene(23, 20, 0.3, 5)
    first = align_poses_umeyama(predicted, given, ransac=True, random_state=3)
    again = align_poses_umeyama(predicted, given, ransac=True, random_state=3)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("count", [1, 2])
def test_too_few_cameras_are_refused(count: int) -> None:
    extrinsics = random_extrinsics(np.random.default_rng(0), count)
    with pytest.raises(InvalidInputError, match="at least 3"):
        align_poses_umeyama(extrinsics, extrinsics, ransac=False)


def test_cameras_at_one_place_are_refused() -> None:
    rng = np.random.default_rng(1)
    given = np.linalg.inv(poses(random_rotations(rng, 5), np.zeros((5, 3))))
    with pytest.raises(InvalidInputError, match="coincide"):
        align_poses_umeyama(random_extrinsics(rng, 5), given, ransac=False)


def test_normalized_cameras_are_relative_to_the_first_at_median_distance_one() -> None:
    rng = np.random.default_rng(2)
    extrinsics = random_extrinsics(rng, 4)
    normalized = normalize_extrinsics(extrinsics[:, :3])
    np.testing.assert_allclose(normalized[0], np.eye(4), atol=1e-12)
    centres = np.linalg.inv(normalized)[:, :3, 3]
    distances = np.sort(np.linalg.norm(centres, axis=1))
    assert distances[1] == pytest.approx(1.0)  # lower middle of four: [0, 1, ., .]
    # Relative poses are kept: camera j seen from camera i, up to the common scale.
    relative = normalized[2] @ np.linalg.inv(normalized[1])
    original = extrinsics[2] @ np.linalg.inv(extrinsics[1])
    np.testing.assert_allclose(relative[:3, :3], original[:3, :3], atol=1e-12)


def test_nearly_coincident_cameras_are_not_blown_up() -> None:
    rng = np.random.default_rng(3)
    extrinsics = np.linalg.inv(poses(random_rotations(rng, 3), rng.normal(size=(3, 3)) * 1e-3))
    centres = np.linalg.inv(normalize_extrinsics(extrinsics))[:, :3, 3]
    original = np.linalg.inv(extrinsics)[:, :3, 3]
    # Divided by the 0.1 floor, not by their (about 1e-3) median distance.
    expected = np.linalg.norm(original - original[0], axis=1) / 0.1
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), expected, atol=1e-12)
