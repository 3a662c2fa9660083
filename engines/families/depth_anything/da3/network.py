"""The Depth Anything 3 network: independent images, or the views of one scene.

:meth:`Da3Network.forward` predicts each image on its own; :meth:`Da3Network.forward_scene`
runs the views of one scene together (any-view models), optionally conditioned on known
cameras, as the reference's multi-view forward. :class:`SceneGraph` is the same scene forward
with every choice a tensor input, for one ONNX graph that serves all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from engines.families.depth_anything.da3.backbone import Backbone, LayerOutput
from engines.families.depth_anything.da3.camera import (
    CameraDecoder,
    CameraEncoder,
    cameras_to_pose,
    pose_to_cameras,
)
from engines.families.depth_anything.da3.config import Da3Config
from engines.families.depth_anything.da3.heads import DptHead, DualDptHead
from engines.families.depth_anything.da3.postprocess import apply_sky_rule
from engines.families.depth_anything.da3.views import (
    MIN_VIEWS_FOR_SELECTION,
    REF_VIEW_STRATEGIES,
    enough_views,
)


class Da3Output(NamedTuple):
    """What one forward returns; absent outputs are None.

    Attributes:
        depth: [B, H, W] depth at the network input size (relative; metric models: see
            ``metric_depth_m``).
        confidence: [B, H, W] depth confidence (any-view models), >= 1.
        intrinsics: [B, 3, 3] in pixels of the network input (any-view models).
        extrinsics: [B, 3, 4] world-to-camera (any-view models): an image's own frame, or
            one frame for all views of a scene.
        sky: [B, H, W] sky score (mono / metric models); sky where >= 0.3.

    """

    depth: Tensor
    confidence: Tensor | None
    intrinsics: Tensor | None
    extrinsics: Tensor | None
    sky: Tensor | None


class Da3Network(nn.Module):
    """DA3 for independent images (:meth:`forward`) or the views of one scene.

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
        return self._decode(self.backbone(pixel_values), height, width)

    def forward_scene(
        self,
        views: Tensor,
        extrinsics: Tensor | None = None,
        intrinsics: Tensor | None = None,
        ref_view_strategy: str = "saddle_balanced",
    ) -> Da3Output:
        """Predict depth and cameras for the views of one scene, which attend to each other.

        Without cameras, scenes of at least three views get a reference view chosen by
        ``ref_view_strategy``; predicted cameras are then in its frame. With cameras, their
        tokens condition the backbone; the cameras returned are still predicted.

        Args:
            views: [S, 3, H, W] ImageNet-normalised views, H and W multiples of 14.
            extrinsics: [S, 4, 4] world-to-camera, already normalised by the caller.
            intrinsics: [S, 3, 3] in pixels of the network input; given with ``extrinsics``.
            ref_view_strategy: One of ``REF_VIEW_STRATEGIES``.

        Returns:
            A :class:`Da3Output` with one entry per view, in the input order.

        Raises:
            ValueError: Not an any-view model, an unknown strategy, or cameras that do not
                fit the views.

        """
        self._check_scene(views, extrinsics, intrinsics, ref_view_strategy)
        height, width = views.shape[-2], views.shape[-1]
        if extrinsics is None or intrinsics is None:
            tokens = self.backbone.pretrained.learned_camera_tokens(len(views))
        else:
            tokens = self.encode_cameras(extrinsics, intrinsics, height, width)
        selects = extrinsics is None and len(views) >= MIN_VIEWS_FOR_SELECTION
        strategy = REF_VIEW_STRATEGIES.index(ref_view_strategy)
        return self.run_scene(views, tokens, strategy, torch.tensor(selects, device=views.device))

    def run_scene(
        self, views: Tensor, camera_tokens: Tensor, strategy: int | Tensor, selects: Tensor
    ) -> Da3Output:
        """The scene forward once its choices are made (see ``Backbone.forward_scene``)."""
        height, width = views.shape[-2], views.shape[-1]
        views = views.to(self.backbone.pretrained.pos_embed.dtype)
        outputs = self.backbone.forward_scene(views, camera_tokens, strategy, selects)
        return self._decode(outputs, height, width)

    def encode_cameras(
        self, extrinsics: Tensor, intrinsics: Tensor, height: int | Tensor, width: int | Tensor
    ) -> Tensor:
        """[S, C] camera tokens of known cameras ([S, 4, 4] world-to-camera, [S, 3, 3]).

        As the reference: pose encodings in float32, autocast off.
        """
        assert self.cam_enc is not None
        weights = self.backbone.pretrained.pos_embed
        with torch.autocast(device_type=weights.device.type, enabled=False):
            pose = cameras_to_pose(extrinsics.float(), intrinsics.float(), height, width)
            return self.cam_enc(pose[None].to(weights.dtype))[0]

    def _check_scene(
        self, views: Tensor, extrinsics: Tensor | None, intrinsics: Tensor | None, strategy: str
    ) -> None:
        if self.cam_enc is None:
            raise ValueError(f"{self.config.model_name} is no any-view model: it has no scenes")
        if strategy not in REF_VIEW_STRATEGIES:
            raise ValueError(f"Unknown ref_view_strategy {strategy!r}: {REF_VIEW_STRATEGIES}")
        if (extrinsics is None) != (intrinsics is None):
            raise ValueError("Give both extrinsics and intrinsics, or neither")
        count = len(views)
        if extrinsics is not None and intrinsics is not None:
            if extrinsics.shape[0] != count or extrinsics.shape[-2:] not in ((4, 4), (3, 4)):
                raise ValueError(f"extrinsics must be [{count}, 4, 4], not {extrinsics.shape}")
            if intrinsics.shape != (count, 3, 3):
                raise ValueError(f"intrinsics must be [{count}, 3, 3], not {intrinsics.shape}")

    def _decode(self, outputs: list[LayerOutput], height: int, width: int) -> Da3Output:
        """Head and camera decoder, per image (or view)."""
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


class SceneGraph(nn.Module):
    """:meth:`Da3Network.forward_scene` with every choice a tensor input, for ONNX export.

    One traced graph serves every case: the number of views and the image size are dynamic,
    the four strategies' picks are all computed and one is taken by index, and the camera
    encoder always runs, its tokens taken only where ``has_cameras``. Eagerly it gives the
    same numbers as ``forward_scene``.

    Args:
        network: An any-view network.

    """

    def __init__(self, network: Da3Network) -> None:
        super().__init__()
        if network.cam_enc is None:
            raise ValueError(f"{network.config.model_name} is no any-view model")
        self.network = network

    def forward(
        self,
        pixel_values: Tensor,
        extrinsics: Tensor,
        intrinsics: Tensor,
        has_cameras: Tensor,
        ref_strategy: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run one scene.

        Args:
            pixel_values: [S, 3, H, W] ImageNet-normalised views.
            extrinsics: [S, 4, 4] world-to-camera (read only where ``has_cameras``).
            intrinsics: [S, 3, 3] in network-input pixels (read only where ``has_cameras``).
            has_cameras: bool or int64 scalar: condition on the given cameras.
            ref_strategy: int64 scalar index into ``REF_VIEW_STRATEGIES``.

        Returns:
            ``(depth [S, H, W], confidence [S, H, W], intrinsics [S, 3, 3],
            extrinsics [S, 3, 4])``.

        """
        network = self.network
        height, width = pixel_values.shape[-2], pixel_values.shape[-1]
        views = pixel_values.shape[0]
        cameras = has_cameras != 0
        learned = network.backbone.pretrained.learned_camera_tokens(views)
        given = network.encode_cameras(extrinsics, intrinsics, height, width)
        tokens = torch.where(cameras, given.to(learned.dtype), learned)
        selects = ~cameras & enough_views(views, pixel_values.device)
        out = network.run_scene(pixel_values, tokens, ref_strategy, selects)
        assert out.confidence is not None and out.intrinsics is not None
        assert out.extrinsics is not None
        return out.depth, out.confidence, out.intrinsics, out.extrinsics
