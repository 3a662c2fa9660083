"""Camera decoder (token → pose encoding → cameras) and encoder (cameras → pose encoding → token).

A pose encoding is 9 numbers: translation (3), rotation quaternion (4, xyzw, scalar last) and
field of view (vertical, horizontal) in radians, of the camera-to-world pose. Cameras outside
the network are world-to-camera extrinsics and pixel intrinsics, as in the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.families.depth_anything.da3.blocks import Block, Mlp


class CameraDecoder(nn.Module):
    """MLP from the last output layer's camera token to a pose encoding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU()
        )
        self.fc_t = nn.Linear(dim, 3)
        self.fc_qvec = nn.Linear(dim, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim, 2), nn.ReLU())

    def forward(self, token: Tensor) -> Tensor:
        """[B, dim] camera token → [B, 9] pose encoding (t, quaternion xyzw, fov_h, fov_w)."""
        hidden = self.backbone(token)
        return torch.cat((self.fc_t(hidden), self.fc_qvec(hidden), self.fc_fov(hidden)), dim=-1)


class CameraEncoder(nn.Module):
    """Pose encodings → camera tokens, for pose-conditioned multi-view inference.

    Its blocks attend across the views of a scene (no position embedding).
    """

    def __init__(self, dim: int, depth: int = 4, num_heads: int = 16) -> None:
        super().__init__()
        self.pose_branch = Mlp(9, dim // 2, dim)
        self.token_norm = nn.LayerNorm(dim)
        self.trunk = nn.Sequential(
            *(Block(dim, num_heads, norm_eps=1e-5, layer_scale=0.01) for _ in range(depth))
        )
        self.trunk_norm = nn.LayerNorm(dim)

    def forward(self, pose_encoding: Tensor) -> Tensor:
        """[B, views, 9] pose encodings → [B, views, dim] camera tokens."""
        tokens = self.token_norm(self.pose_branch(pose_encoding))
        for block in self.trunk:
            tokens = block(tokens)
        return self.trunk_norm(tokens)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """Unit quaternions [..., 4] (xyzw, real part >= 0) of rotation matrices [..., 3, 3].

    The reference's conversion: four candidates, each exact where its component is large,
    and the one of the largest component kept (a gather here instead of the reference's
    boolean mask, which ONNX export does not take with dynamic shapes).
    """
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = matrix.flatten(-2).unbind(-1)
    squares = torch.stack(
        (
            1.0 + m00 + m11 + m22,
            1.0 + m00 - m11 - m22,
            1.0 - m00 + m11 - m22,
            1.0 - m00 - m11 + m22,
        ),
        dim=-1,
    )
    magnitudes = torch.where(squares > 0, torch.sqrt(squares), torch.zeros_like(squares))
    r, i, j, k = magnitudes.unbind(-1)
    candidates = torch.stack(  # [..., 4 candidates, 4 components], real part first
        (
            torch.stack((r**2, m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, i**2, m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, j**2, m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, k**2), dim=-1),
        ),
        dim=-2,
    )
    candidates = candidates / (2.0 * magnitudes[..., None].clamp_min(0.1))
    best = magnitudes.argmax(dim=-1, keepdim=True)[..., None].expand_as(candidates[..., :1, :])
    quaternion = candidates.gather(-2, best).squeeze(-2)[..., [1, 2, 3, 0]]
    return torch.where(quaternion[..., 3:] < 0, -quaternion, quaternion)


def cameras_to_pose(
    extrinsics: Tensor, intrinsics: Tensor, height: int | Tensor, width: int | Tensor
) -> Tensor:
    """Pose encodings of cameras of a ``height`` x ``width`` image (the encoder's input).

    Args:
        extrinsics: [..., 4, 4] (or [..., 3, 4]) world-to-camera.
        intrinsics: [..., 3, 3] in pixels of the network input; only the focal lengths count.
        height: Network input height in pixels (an int, or a traced size under export).
        width: Network input width in pixels.

    Returns:
        [..., 9] float32 pose encodings of the camera-to-world poses.

    """
    inverse_rotation = extrinsics[..., :3, :3].transpose(-1, -2)
    translation = -inverse_rotation @ extrinsics[..., :3, 3:]
    quaternion = matrix_to_quaternion(inverse_rotation)
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat(
        (translation[..., 0], quaternion, fov_h[..., None], fov_w[..., None]), dim=-1
    ).float()


def quaternion_to_matrix(quaternion: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] from (not necessarily unit) quaternions [..., 4], xyzw."""
    i, j, k, r = quaternion.unbind(-1)
    two_s = 2.0 / (quaternion * quaternion).sum(-1)
    rows = (
        1 - two_s * (j * j + k * k),
        two_s * (i * j - k * r),
        two_s * (i * k + j * r),
        two_s * (i * j + k * r),
        1 - two_s * (i * i + k * k),
        two_s * (j * k - i * r),
        two_s * (i * k - j * r),
        two_s * (j * k + i * r),
        1 - two_s * (i * i + j * j),
    )
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def pose_to_cameras(
    pose: Tensor, height: int | Tensor, width: int | Tensor
) -> tuple[Tensor, Tensor]:
    """Turn pose encodings into cameras of a ``height`` x ``width`` image.

    Args:
        pose: [B, 9] pose encodings (camera-to-world translation, quaternion xyzw, fov_h, fov_w).
        height: Network input height in pixels (an int, or a traced size under export).
        width: Network input width in pixels.

    Returns:
        ``(extrinsics [B, 3, 4] world-to-camera, intrinsics [B, 3, 3] in pixels)``; the
        principal point is the image centre.

    """
    pose = pose.float()
    rotation = quaternion_to_matrix(pose[:, 3:7])
    translation = pose[:, :3, None]
    inverse_rotation = rotation.transpose(-1, -2)
    extrinsics = torch.cat((inverse_rotation, -inverse_rotation @ translation), dim=-1)
    fy = (height / 2.0) / torch.clamp(torch.tan(pose[:, 7] / 2.0), 1e-6)
    fx = (width / 2.0) / torch.clamp(torch.tan(pose[:, 8] / 2.0), 1e-6)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    cx, cy = one * (width / 2), one * (height / 2)  # not full_like: traced sizes stay dynamic
    intrinsics = torch.stack((fx, zero, cx, zero, fy, cy, zero, zero, one), dim=-1)
    return extrinsics, intrinsics.unflatten(-1, (3, 3))
