"""DA3 with the caller's cameras: normalising them for the network, aligning its poses to them.

The reference ``DepthAnything3.inference`` given extrinsics normalises them before the network
(:func:`normalize_extrinsics`) and afterwards relates its predicted poses to the given ones by a
similarity (:func:`align_poses_umeyama`, with RANSAC from :data:`RANSAC_MIN_VIEWS` views on);
the similarity's scale turns predicted depth into the given cameras' units (``depth / scale``).

Plain-numpy ports of ``DepthAnything3._normalize_extrinsics`` and
``depth_anything_3.utils.pose_align.align_poses_umeyama`` (and the evo Umeyama it calls).
Extrinsics are world-to-camera, ``[N, 3, 4]`` or ``[N, 4, 4]``; poses are their inverses.
"""

from __future__ import annotations

import numpy as np

from engines.errors import InvalidInputError

RANSAC_MIN_VIEWS = 10  # the reference aligns with RANSAC from this many views on
RANSAC_ITERATIONS = 10
MIN_ALIGNMENT_VIEWS = 3  # Umeyama needs three non-collinear camera centres
MIN_MEDIAN_DISTANCE = 0.1  # the reference's clamp: nearly coincident cameras are not blown up

Similarity = tuple[np.ndarray, np.ndarray, float]  # (rotation [3, 3], translation [3], scale)


def normalize_extrinsics(extrinsics: np.ndarray) -> np.ndarray:
    """Extrinsics as the network sees them: relative to the first camera, median distance 1.

    Every camera is re-expressed in the first camera's frame, and translations are divided by
    the median distance of the cameras from the first one (at least 0.1). The median is the
    lower of the two middle values for an even count, as ``torch.median`` takes it.

    Args:
        extrinsics: [N, 4, 4] or [N, 3, 4] world-to-camera matrices.

    Returns:
        [N, 4, 4] float64 normalised world-to-camera matrices.

    """
    world_to_camera = _homogeneous(extrinsics)
    normalized = world_to_camera @ _rigid_inverse(world_to_camera[:1])
    distances = np.sort(np.linalg.norm(_rigid_inverse(normalized)[:, :3, 3], axis=-1))
    median = max(float(distances[(len(distances) - 1) // 2]), MIN_MEDIAN_DISTANCE)
    normalized[:, :3, 3] /= median
    return normalized


def align_poses_umeyama(
    predicted: np.ndarray, given: np.ndarray, *, ransac: bool, random_state: int = 42
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """The similarity that maps the given camera centres onto the predicted ones.

    The reference's ``align_poses_umeyama(predicted, given, return_aligned=True, ...)``: the
    given trajectory is aligned to the predicted one, so ``scale`` converts given units into
    predicted units (predicted depth in given units is ``depth / scale``). With ``ransac``, ten
    seeded rounds fit half the views (at least three) and keep the model with the most inliers
    (ties: the smaller mean error) under the median nearest-centre distance of a first fit to
    all views; the final model is refitted to those inliers.

    Args:
        predicted: [N, 4, 4] or [N, 3, 4] world-to-camera matrices from the network.
        given: [N, 4, 4] or [N, 3, 4] world-to-camera matrices from the caller, same order.
        ransac: Fit robustly to outlier views (the reference does from 10 views on).
        random_state: Seed of the RANSAC samples.

    Returns:
        ``(rotation [3, 3], translation [3], scale, aligned [N, 3, 4])``: a given camera centre
        ``c`` maps to ``scale * rotation @ c + translation`` in the predicted frame, and
        ``aligned`` are the given cameras so mapped, as world-to-camera matrices.

    Raises:
        InvalidInputError: Fewer than three cameras, or their centres coincide or lie exactly on
            one line.

    """
    predicted_poses = _rigid_inverse(_homogeneous(predicted))
    given_poses = _rigid_inverse(_homogeneous(given))
    target, source = predicted_poses[:, :3, 3], given_poses[:, :3, 3]
    if len(source) < MIN_ALIGNMENT_VIEWS:
        raise InvalidInputError(f"aligning to given cameras needs at least 3, got {len(source)}")
    if ransac:
        rotation, translation, scale = _ransac_umeyama(source, target, random_state)
    else:
        rotation, translation, scale = _umeyama(source, target)
    aligned = _apply_similarity(given_poses, rotation, translation, scale)
    return rotation, translation, scale, _rigid_inverse(aligned)[:, :3]


def _homogeneous(extrinsics: np.ndarray) -> np.ndarray:
    """[N, 3, 4] or [N, 4, 4] → a float64 [N, 4, 4] copy."""
    matrices = np.zeros((len(extrinsics), 4, 4))
    matrices[:, 3, 3] = 1.0
    matrices[:, : extrinsics.shape[1]] = extrinsics
    return matrices


def _rigid_inverse(matrices: np.ndarray) -> np.ndarray:
    """Inverse of [N, 4, 4] rigid transforms, by transposing the rotation as the reference does."""
    inverse = matrices.copy()
    rotation_t = np.swapaxes(matrices[:, :3, :3], -1, -2)
    inverse[:, :3, :3] = rotation_t
    inverse[:, :3, 3] = -(rotation_t @ matrices[:, :3, 3:])[..., 0]
    return inverse


def _umeyama(source: np.ndarray, target: np.ndarray) -> Similarity:
    """Least-squares similarity with ``target ≈ scale * rotation @ source + translation``.

    Umeyama (1991), as evo's ``umeyama_alignment(with_scale=True)`` computes it.

    Raises:
        InvalidInputError: The covariance has rank < 2 (points coincide or are exactly collinear).
            Like evo, only exact rank loss counts: nearly collinear points still give a good
            scale, though a rotation about their line that rounding decides.

    """
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    variance = float((source_centred**2).sum()) / len(source)
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    if np.count_nonzero(singular > np.finfo(singular.dtype).eps) < 2:
        raise InvalidInputError(
            "cannot align to given cameras whose centres coincide or lie exactly on one line"
        )
    signs = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0.0:
        signs[2] = -1.0  # a rotation, never a reflection
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular * signs).sum()) / variance
    return rotation, target_mean - scale * rotation @ source_mean, scale


def _ransac_umeyama(source: np.ndarray, target: np.ndarray, random_state: int) -> Similarity:
    """The reference's ``_ransac_align_sim3`` with its defaults (see :func:`align_poses_umeyama`).

    The draws are the reference's: one ``rng.choice`` per round from ``default_rng(seed)``.
    """
    rng = np.random.default_rng(random_state)
    count = len(source)
    sample_size = max(MIN_ALIGNMENT_VIEWS, (count + 1) // 2)
    best = _umeyama(source, target)
    threshold = _median_nearest_distance(target, _map_points(source, *best))
    best_inliers: np.ndarray | None = None
    best_score = (-1, np.inf)
    for _ in range(RANSAC_ITERATIONS):
        sample = rng.choice(count, size=sample_size, replace=False)
        try:
            model = _umeyama(source[sample], target[sample])
        except InvalidInputError:
            continue
        errors = np.linalg.norm(_map_points(source, *model) - target, axis=1)
        inliers = errors <= threshold
        inlier_count = int(inliers.sum())
        mean_error = float(errors[inliers].mean()) if inlier_count else np.inf
        if inlier_count > best_score[0] or (
            inlier_count == best_score[0] and mean_error < best_score[1]
        ):
            best_score, best, best_inliers = (inlier_count, mean_error), model, inliers
    if best_inliers is not None and best_inliers.sum() >= MIN_ALIGNMENT_VIEWS:
        return _umeyama(source[best_inliers], target[best_inliers])
    return best


def _median_nearest_distance(target: np.ndarray, mapped: np.ndarray) -> float:
    """Median over mapped points of the distance to the nearest target point (any index)."""
    distances = np.linalg.norm(mapped[:, None] - target[None], axis=-1)
    return float(np.median(distances.min(axis=1)))


def _map_points(
    points: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: float
) -> np.ndarray:
    """[N, 3] points through the similarity."""
    return scale * points @ rotation.T + translation


def _apply_similarity(
    poses: np.ndarray, rotation: np.ndarray, translation: np.ndarray, scale: float
) -> np.ndarray:
    """[N, 4, 4] camera-to-world poses through the similarity (rotations turn, centres map)."""
    mapped = poses.copy()
    mapped[:, :3, :3] = rotation @ poses[:, :3, :3]
    mapped[:, :3, 3] = _map_points(poses[:, :3, 3], rotation, translation, scale)
    return mapped
