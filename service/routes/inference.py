"""``POST /inference/{model}``: synchronous inference, one handler per model type."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body

from service.inference import InferenceService
from service.schemas.depth_anything import DepthAnythingRequest, DepthAnythingResponse
from service.schemas.dinov3 import Dinov3Request, Dinov3Response
from service.schemas.grounding_dino import GroundingDinoRequest, GroundingDinoResponse
from service.schemas.sam3 import Sam3Request, Sam3Response

IMAGE = "https://images.example.com/cat.jpg"


def _body(summary: str, **fields: Any) -> Body:
    """A JSON body with one documented example (shown in Swagger UI and ReDoc)."""
    return Body(examples=[Example(summary=summary, value={"images": [IMAGE], **fields})])


class InferenceController(Controller):
    """Decode the request, run it through the pool, return the results in input order."""

    path = "/inference"
    tags = ["inference"]

    @post("/dinov3", status_code=200, summary="DINOv3 image embeddings and patch features")
    async def dinov3(
        self,
        data: Annotated[
            Dinov3Request,
            _body("CLS embedding, L2-normalised", pooling="cls", normalize=True),
        ],
        inference: NamedDependency[InferenceService],
    ) -> Dinov3Response:
        """Embed each image; optionally return its patch features on their grid."""
        return await inference.run("dinov3", data)  # type: ignore[return-value]

    @post("/grounding-dino", status_code=200, summary="GroundingDINO open-vocabulary detection")
    async def grounding_dino(
        self,
        data: Annotated[
            GroundingDinoRequest,
            _body("Two labels", prompts=["a cat", "a remote control"], box_threshold=0.35,
                  text_threshold=0.25),
        ],
        inference: NamedDependency[InferenceService],
    ) -> GroundingDinoResponse:
        """Detect the objects the prompts name; each detection carries its whole prompt."""
        return await inference.run("grounding-dino", data)  # type: ignore[return-value]

    @post("/sam3", status_code=200, summary="SAM3 text-prompted instance segmentation")
    async def sam3(
        self,
        data: Annotated[
            Sam3Request,
            _body("Two prompts, COCO RLE masks", prompts=["cat", "ear"], threshold=0.5,
                  mask_threshold=0.5, output_format="rle"),
        ],
        inference: NamedDependency[InferenceService],
    ) -> Sam3Response:
        """Segment every instance of each prompt; each image is encoded once for all prompts."""
        return await inference.run("sam3", data)  # type: ignore[return-value]

    @post("/depth-anything", status_code=200, summary="Depth Anything depth estimation")
    async def depth_anything(
        self,
        data: Annotated[
            DepthAnythingRequest,
            _body("Metric depth as a 16-bit PNG", variant="metric-large", output_format="png",
                  focal_px=1000.0),
        ],
        inference: NamedDependency[InferenceService],
    ) -> DepthAnythingResponse:
        """Predict a depth map per image, at the image's size (metres for metric variants)."""
        return await inference.run("depth-anything", data)  # type: ignore[return-value]
