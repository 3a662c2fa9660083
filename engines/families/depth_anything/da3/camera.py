"""Camera decoder (token → pose encoding → extrinsics, intrinsics) and the camera encoder.

A pose encoding is 9 numbers: translation (3), rotation quaternion (4, xyzw, scalar last) and
field of view (vertical, horizontal) in radians. The decoder predicts the camera-to-world pose;
we return its inverse, world-to-camera, as the reference does.
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
    """Pose encoding → camera token, for pose-conditioned inference.

    Present so that any-view checkpoints load strictly; :class:`Da3Network` does not take
    camera inputs yet, so nothing calls it.
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
