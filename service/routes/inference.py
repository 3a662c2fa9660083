"""``POST /inference/{model}``: synchronous inference, one handler per model type."""

from __future__ import annotations

from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar import Controller, post

from service.inference import InferenceService
from service.schemas.depth_anything import DepthAnythingRequest, DepthAnythingResponse
from service.schemas.dinov3 import Dinov3Request, Dinov3Response
from service.schemas.grounding_dino import GroundingDinoRequest, GroundingDinoResponse
from service.schemas.sam3 import Sam3Request, Sam3Response


class InferenceController(Controller):
    """Decode the request, run it through the pool, return the results in input order."""

    path = "/inference"
    tags = ["inference"]

    @post("/dinov3", status_code=200, summary="DINOv3 image embeddings and patch features")
    async def dinov3(self, data: JSONBody[Dinov3Request], inference: NamedDependency[InferenceService]) -> Dinov3Response:
        """Embed each image; optionally return its patch features on their grid."""
        return await inference.run("dinov3", data)  # type: ignore[return-value]

    @post("/grounding-dino", status_code=200, summary="GroundingDINO open-vocabulary detection")
    async def grounding_dino(
        self, data: JSONBody[GroundingDinoRequest], inference: NamedDependency[InferenceService]
    ) -> GroundingDinoResponse:
        """Detect the objects the prompts name; each detection carries its whole prompt."""
        return await inference.run("grounding-dino", data)  # type: ignore[return-value]

    @post("/sam3", status_code=200, summary="SAM3 text-prompted instance segmentation")
    async def sam3(
        self, data: JSONBody[Sam3Request], inference: NamedDependency[InferenceService]
    ) -> Sam3Response:
        """Segment every instance of each prompt; each image is encoded once for all prompts."""
        return await inference.run("sam3", data)  # type: ignore[return-value]

    @post("/depth-anything", status_code=200, summary="Depth Anything depth estimation")
    async def depth_anything(
        self, data: JSONBody[DepthAnythingRequest], inference: NamedDependency[InferenceService]
    ) -> DepthAnythingResponse:
        """Predict a depth map per image, at the image's size (metres for metric variants)."""
        return await inference.run("depth-anything", data)  # type: ignore[return-value]
