"""The Depth Anything 3 network: backbone, head and camera decoder for single views."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from engines.families.depth_anything.da3.backbone import Backbone
from engines.families.depth_anything.da3.camera import CameraDecoder, CameraEncoder, pose_to_cameras
from engines.families.depth_anything.da3.config import Da3Config
from engines.families.depth_anything.da3.heads import DptHead, DualDptHead
from engines.families.depth_anything.da3.postprocess import apply_sky_rule


class Da3Output(NamedTuple):
    """What one forward returns; absent outputs are None.

    Attributes:
        depth: [B, H, W] depth at the network input size (relative; metric models: see
            ``metric_depth_m``).
        confidence: [B, H, W] depth confidence (any-view models), >= 1.
        intrinsics: [B, 3, 3] in pixels of the network input (any-view models).
        extrinsics: [B, 3, 4] world-to-camera (any-view models; a single view's own frame).
        sky: [B, H, W] sky score (mono / metric models); sky where >= 0.3.

    """

    depth: Tensor
    confidence: Tensor | None
    intrinsics: Tensor | None
    extrinsics: Tensor | None
    sky: Tensor | None


class Da3Network(nn.Module):
    """DA3 for independent images (the reference's view axis N is 1 for every image).

    Submodule names match the official checkpoints (``backbone.pretrained``, ``head``,
    ``cam_enc``, ``cam_dec``) once their ``model.`` prefix is removed.

    Args:
        config: Architecture.
        sky_rule: For models with a sky head, apply :func:`apply_sky_rule` inside
            :meth:`forward` (default, as the reference does), so both runtimes return the same
            depth. ``sky`` is returned either way.

    """

    def __init__(self, config: Da3Config, *, sky_rule: bool = True) -> None:
        super().__init__()
        self.config = config
        self.sky_rule = sky_rule
        self.backbone = Backbone(config)
        self.head: DptHead
        if config.head_kind == "dualdpt":
            self.head = DualDptHead(
                config.head_dim_in,
                config.head_features,
                config.head_out_channels,
                patch_size=config.patch_size,
                aux_levels=config.aux_levels,
                aux_out1_convs=config.aux_out1_convs,
            )
        else:
            self.head = DptHead(
                config.head_dim_in,
                config.head_features,
                config.head_out_channels,
                patch_size=config.patch_size,
                sky_head=config.sky_head,
            )
        self.cam_enc: CameraEncoder | None = None
        self.cam_dec: CameraDecoder | None = None
        if config.has_camera:
            self.cam_enc = CameraEncoder(
                config.embed_dim, config.camera_encoder_depth, config.camera_encoder_heads
            )
            self.cam_dec = CameraDecoder(config.head_dim_in)

    def forward(self, pixel_values: Tensor) -> Da3Output:
        """Predict depth (and cameras or sky) for each image of the batch on its own.

        Args:
            pixel_values: [B, 3, H, W] ImageNet-normalised images, H and W multiples of 14
                (see ``preprocess_da3``); cast to the weights' dtype.

        Returns:
            A :class:`Da3Output`.

        """
        # Plain ints eagerly; traced sizes under ONNX export, so H and W stay dynamic.
        height, width = pixel_values.shape[-2], pixel_values.shape[-1]
        pixel_values = pixel_values.to(self.backbone.pretrained.pos_embed.dtype)
        outputs = self.backbone(pixel_values)
        features = [patches for patches, _ in outputs]
        depth, second = self.head(features, height, width)
        confidence = sky = intrinsics = extrinsics = None
        if self.config.head_kind == "dualdpt":
            confidence = second
        else:
            sky = second
            if sky is not None and self.sky_rule:
                depth = apply_sky_rule(depth, sky)
        if self.cam_dec is not None:
            extrinsics, intrinsics = pose_to_cameras(self.cam_dec(outputs[-1][1]), height, width)
        return Da3Output(depth, confidence, intrinsics, extrinsics, sky)
