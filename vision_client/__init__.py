"""A Python client for the Vision Models API: sync and async, typed results, decoded outputs.

Example:
    >>> from vision_client import VisionClient
    >>> with VisionClient("http://127.0.0.1:8000") as client:  # doctest: +SKIP
    ...     result = client.sam3(["photo.jpg"], ["cat"], output_format="rle").results[0]
    ...     masks = result.masks()  # (instances, height, width) bool
"""

from vision_client.client import AsyncJob, AsyncVisionClient, Job, VisionClient
from vision_client.errors import VisionAPIError
from vision_client.images import ImageLike, encode_image
from vision_client.results import (
    DepthResponse,
    DepthResult,
    DepthSceneResponse,
    Dinov3Response,
    Dinov3Result,
    GroundingDinoResponse,
    GroundingDinoResult,
    JobInfo,
    JobList,
    ModelStatus,
    Sam3EmbedResponse,
    Sam3Response,
    Sam3Result,
    ScenePointCloud,
    SceneView,
    decode_depth,
    decode_mask,
    decode_png_image,
)

__all__ = [
    "AsyncJob",
    "AsyncVisionClient",
    "DepthResponse",
    "DepthResult",
    "DepthSceneResponse",
    "Dinov3Response",
    "Dinov3Result",
    "GroundingDinoResponse",
    "GroundingDinoResult",
    "ImageLike",
    "Job",
    "JobInfo",
    "JobList",
    "ModelStatus",
    "Sam3EmbedResponse",
    "Sam3Response",
    "Sam3Result",
    "ScenePointCloud",
    "SceneView",
    "VisionAPIError",
    "VisionClient",
    "decode_depth",
    "decode_mask",
    "decode_png_image",
    "encode_image",
]
