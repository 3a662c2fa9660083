"""``VisionClient`` (sync) and ``AsyncVisionClient``: one request builder, two transports.

Each endpoint method builds a :class:`Call` (method, path, body, how to parse the answer) in
:class:`_Calls`; the sync client sends it with ``httpx.Client``, the async one with
``httpx.AsyncClient``. Nothing else differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import msgspec
import numpy as np

from vision_client.errors import VisionAPIError
from vision_client.images import ImageLike, encode_images
from vision_client.results import (
    RESPONSE_TYPES,
    DepthResponse,
    DepthSceneResponse,
    Dinov3Response,
    GroundingDinoResponse,
    InferenceResponse,
    JobInfo,
    JobList,
    ModelStatus,
    Sam3EmbedResponse,
    Sam3Response,
    UnloadResult,
)

T = TypeVar("T")
FINAL_STATUSES = frozenset({"completed", "failed"})


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how its JSON answer becomes a ``T``."""

    method: str
    path: str
    parse: Callable[[bytes], T]
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None


def _typed(kind: type[T]) -> Callable[[bytes], T]:
    return lambda content: msgspec.json.decode(content, type=kind)


def _body(**fields: Any) -> dict[str, Any]:
    """The fields that are set (None means "the server's default")."""
    return {k: v for k, v in fields.items() if v is not None}


def _matrices(matrices: Any, rows: int) -> list[list[list[float]]] | None:
    """Per-view matrices (nested lists or arrays) as JSON lists of ``rows`` x ``rows``.

    A 3x4 extrinsics matrix, as a scene response returns it, gets its last row 0 0 0 1.
    """
    if matrices is None:
        return None
    array = np.asarray(matrices, np.float64)
    if rows == 4 and array.ndim == 3 and array.shape[1] == 3:
        bottom = np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(array), 1, 4))
        array = np.concatenate([array, bottom], axis=1)
    matrix_list: list[list[list[float]]] = array.tolist()
    return matrix_list


def _sam3_parse(output_format: str) -> Callable[[bytes], Sam3Response]:
    def parse(content: bytes) -> Sam3Response:
        response = msgspec.json.decode(content, type=Sam3Response)
        for result in response.results:
            result.output_format = output_format
        return response

    return parse


def job_response(job: JobInfo) -> InferenceResponse:
    """A completed job's result as the typed response of its model type.

    Raises:
        ValueError: The job has no result (not completed).
    """
    if job.result is None:
        raise ValueError(f"job {job.job_id} is {job.status}: it has no result ({job.error})")
    return msgspec.convert(job.result, RESPONSE_TYPES[job.model_type])


class _Calls:
    """The requests of every endpoint, shared by both clients."""

    def sam3(
        self,
        images: ImageLike | Sequence[ImageLike],
        prompts: Sequence[str],
        threshold: float | None = None,
        mask_threshold: float | None = None,
        output_format: str = "dense",
        variant: str | None = None,
        visualize: bool = False,
    ) -> Call[Sam3Response]:
        body = _body(
            images=encode_images(images),  # type: ignore[arg-type]
            prompts=list(prompts),
            threshold=threshold,
            mask_threshold=mask_threshold,
            output_format=output_format,
            variant=variant,
            visualize=visualize or None,
        )
        return Call("POST", "/inference/sam3", _sam3_parse(output_format), body)

    def sam3_embed(
        self, images: ImageLike | Sequence[ImageLike], variant: str | None = None
    ) -> Call[Sam3EmbedResponse]:
        body = _body(images=encode_images(images), variant=variant)  # type: ignore[arg-type]
        return Call("POST", "/inference/sam3/embed", _typed(Sam3EmbedResponse), body)

    def grounding_dino(
        self,
        images: ImageLike | Sequence[ImageLike],
        prompts: Sequence[str],
        box_threshold: float | None = None,
        text_threshold: float | None = None,
        variant: str | None = None,
        visualize: bool = False,
    ) -> Call[GroundingDinoResponse]:
        body = _body(
            images=encode_images(images),  # type: ignore[arg-type]
            prompts=list(prompts),
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            variant=variant,
            visualize=visualize or None,
        )
        return Call("POST", "/inference/grounding-dino", _typed(GroundingDinoResponse), body)

    def depth(
        self,
        images: ImageLike | Sequence[ImageLike],
        output_format: str | None = None,
        focal_px: float | None = None,
        variant: str | None = None,
        visualize: bool = False,
    ) -> Call[DepthResponse]:
        body = _body(
            images=encode_images(images),  # type: ignore[arg-type]
            output_format=output_format,
            focal_px=focal_px,
            variant=variant,
            visualize=visualize or None,
        )
        return Call("POST", "/inference/depth-anything", _typed(DepthResponse), body)

    def depth_scene(
        self,
        images: Sequence[ImageLike],
        extrinsics: Any = None,
        intrinsics: Any = None,
        ref_view_strategy: str | None = None,
        process_res: int | None = None,
        output_format: str | None = None,
        point_cloud: str | None = None,
        conf_percentile: float | None = None,
        max_points: int | None = None,
        variant: str | None = None,
        visualize: bool = False,
    ) -> Call[DepthSceneResponse]:
        body = _body(
            images=encode_images(images),  # type: ignore[arg-type]
            extrinsics=_matrices(extrinsics, 4),
            intrinsics=_matrices(intrinsics, 3),
            ref_view_strategy=ref_view_strategy,
            process_res=process_res,
            output_format=output_format,
            point_cloud=point_cloud,
            conf_percentile=conf_percentile,
            max_points=max_points,
            variant=variant,
            visualize=visualize or None,
        )
        return Call("POST", "/inference/depth-anything/scene", _typed(DepthSceneResponse), body)

    def dinov3(
        self,
        images: ImageLike | Sequence[ImageLike],
        pooling: str | None = None,
        normalize: bool | None = None,
        return_patch_features: bool | None = None,
        variant: str | None = None,
        visualize: bool = False,
    ) -> Call[Dinov3Response]:
        body = _body(
            images=encode_images(images),  # type: ignore[arg-type]
            pooling=pooling,
            normalize=normalize,
            return_patch_features=return_patch_features,
            variant=variant,
            visualize=visualize or None,
        )
        return Call("POST", "/inference/dinov3", _typed(Dinov3Response), body)

    def health(self) -> Call[dict[str, Any]]:
        return Call("GET", "/health", _typed(dict[str, Any]))

    def models_status(self) -> Call[list[ModelStatus]]:
        def parse(content: bytes) -> list[ModelStatus]:
            return msgspec.json.decode(content, type=dict[str, list[ModelStatus]])["models"]

        return Call("GET", "/models/status", parse)

    def load_model(
        self,
        model_type: str,
        variant: str | None = None,
        device: str | None = None,
        engine: str | None = None,
    ) -> Call[ModelStatus]:
        body = _body(model_type=model_type, variant=variant, device=device, engine=engine)
        return Call("POST", "/models/load", _typed(ModelStatus), body)

    def unload_model(self, model_type: str, variant: str | None = None) -> Call[UnloadResult]:
        body = _body(model_type=model_type, variant=variant)
        return Call("POST", "/models/unload", _typed(UnloadResult), body)

    def submit_job(self, model_type: str, body: dict[str, Any]) -> Call[JobInfo]:
        if "images" in body:
            body = {**body, "images": encode_images(body["images"])}
        return Call("POST", f"/jobs/submit/{model_type}", _typed(JobInfo), body)

    def get_job(self, job_id: str) -> Call[JobInfo]:
        return Call("GET", f"/jobs/{job_id}", _typed(JobInfo))

    def delete_job(self, job_id: str) -> Call[None]:
        return Call("DELETE", f"/jobs/{job_id}", lambda _: None)

    def list_jobs(self, status: str | None = None, limit: int = 100) -> Call[JobList]:
        return Call("GET", "/jobs", _typed(JobList), params=_body(status=status, limit=limit))


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _parse(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise VisionAPIError.from_response(response)
    return call.parse(response.content)


class VisionClient:
    """A synchronous client; every method raises :class:`VisionAPIError` for an error answer.

    Args:
        base_url: The server, e.g. ``http://127.0.0.1:8000``.
        api_key: Sent as ``X-API-Key`` when set.
        timeout_s: Per-request timeout in seconds.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0):
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout_s
        )
        self._calls = _Calls()

    def __enter__(self) -> VisionClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: Call[T]) -> T:
        response = self._http.request(call.method, call.path, json=call.json, params=call.params)
        return _parse(call, response)

    def sam3(self, images: Any, prompts: Sequence[str], **options: Any) -> Sam3Response:
        """``POST /inference/sam3``: instance masks for each prompt in each image.

        Args:
            images: One image or a list (see :data:`~vision_client.images.ImageLike`;
                ``{"image_id": ...}`` from :meth:`sam3_embed` too).
            prompts: Noun phrases.
            **options: ``threshold``, ``mask_threshold``, ``output_format`` (dense, rle,
                polygon, png), ``variant``, ``visualize``.

        Returns:
            The response; ``results[i].masks()`` decodes masks whatever the format.
        """
        return self._send(self._calls.sam3(images, prompts, **options))

    def sam3_embed(self, images: Any, variant: str | None = None) -> Sam3EmbedResponse:
        """``POST /inference/sam3/embed``: an ``image_id`` per image for later sam3 requests."""
        return self._send(self._calls.sam3_embed(images, variant))

    def grounding_dino(
        self, images: Any, prompts: Sequence[str], **options: Any
    ) -> GroundingDinoResponse:
        """``POST /inference/grounding-dino``: boxes for the labels in ``prompts``.

        ``options``: ``box_threshold``, ``text_threshold``, ``variant``, ``visualize``.
        """
        return self._send(self._calls.grounding_dino(images, prompts, **options))

    def depth(self, images: Any, **options: Any) -> DepthResponse:
        """``POST /inference/depth-anything``; ``results[i].array()`` is the float depth map.

        ``options``: ``output_format`` (array, png), ``focal_px``, ``variant``, ``visualize``.
        """
        return self._send(self._calls.depth(images, **options))

    def depth_scene(self, images: Sequence[Any], **options: Any) -> DepthSceneResponse:
        """``POST /inference/depth-anything/scene``: 2 or more views of one scene in one forward.

        Args:
            images: The views (2 to the server's ``max_scene_views``, default 16), in order;
                sizes may differ.
            **options: ``extrinsics`` (4x4 world-to-camera per view; 3x4 is completed) with
                ``intrinsics`` (3x3 per view, input pixels), as lists or numpy arrays;
                ``ref_view_strategy``, ``process_res``, ``output_format`` (array, png),
                ``point_cloud`` (none, ply, glb), ``conf_percentile``, ``max_points``,
                ``variant`` (any-view DA3), ``visualize``.

        Returns:
            The response: ``views[i].depth_array()``, ``.extrinsics_matrix()``, ...; and
            ``point_cloud.save(path)`` when one was asked for.
        """
        return self._send(self._calls.depth_scene(images, **options))

    def dinov3(self, images: Any, **options: Any) -> Dinov3Response:
        """``POST /inference/dinov3``: embeddings (and patch features).

        ``options``: ``pooling`` (cls, mean, none), ``normalize``, ``return_patch_features``,
        ``variant``, ``visualize``.
        """
        return self._send(self._calls.dinov3(images, **options))

    def health(self) -> dict[str, Any]:
        """``GET /health``: devices, memory, loaded models, job backend."""
        return self._send(self._calls.health())

    def models_status(self) -> list[ModelStatus]:
        """``GET /models/status``: every known variant."""
        return self._send(self._calls.models_status())

    def load_model(self, model_type: str, **options: Any) -> ModelStatus:
        """``POST /models/load`` (``variant``, ``device``, ``engine``); its status entry."""
        return self._send(self._calls.load_model(model_type, **options))

    def unload_model(self, model_type: str, variant: str | None = None) -> UnloadResult:
        """``POST /models/unload``: one variant, or every loaded variant of the type."""
        return self._send(self._calls.unload_model(model_type, variant))

    def submit_job(self, model_type: str, **body: Any) -> Job:
        """``POST /jobs/submit/{model_type}`` with the inference body; a handle to wait on."""
        info = self._send(self._calls.submit_job(model_type, body))
        return Job(self, info)

    def get_job(self, job_id: str) -> JobInfo:
        """``GET /jobs/{job_id}``."""
        return self._send(self._calls.get_job(job_id))

    def delete_job(self, job_id: str) -> None:
        """``DELETE /jobs/{job_id}``: cancel it, or forget a finished one."""
        self._send(self._calls.delete_job(job_id))

    def list_jobs(self, status: str | None = None, limit: int = 100) -> JobList:
        """``GET /jobs``: newest first."""
        return self._send(self._calls.list_jobs(status, limit))


class AsyncVisionClient:
    """The asynchronous twin of :class:`VisionClient` (same methods, awaited)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 120.0):
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=_headers(api_key), timeout=timeout_s
        )
        self._calls = _Calls()

    async def __aenter__(self) -> AsyncVisionClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        response = await self._http.request(
            call.method, call.path, json=call.json, params=call.params
        )
        return _parse(call, response)

    async def sam3(self, images: Any, prompts: Sequence[str], **options: Any) -> Sam3Response:
        """See :meth:`VisionClient.sam3`."""
        return await self._send(self._calls.sam3(images, prompts, **options))

    async def sam3_embed(self, images: Any, variant: str | None = None) -> Sam3EmbedResponse:
        """See :meth:`VisionClient.sam3_embed`."""
        return await self._send(self._calls.sam3_embed(images, variant))

    async def grounding_dino(
        self, images: Any, prompts: Sequence[str], **options: Any
    ) -> GroundingDinoResponse:
        """See :meth:`VisionClient.grounding_dino`."""
        return await self._send(self._calls.grounding_dino(images, prompts, **options))

    async def depth(self, images: Any, **options: Any) -> DepthResponse:
        """See :meth:`VisionClient.depth`."""
        return await self._send(self._calls.depth(images, **options))

    async def depth_scene(self, images: Sequence[Any], **options: Any) -> DepthSceneResponse:
        """See :meth:`VisionClient.depth_scene`."""
        return await self._send(self._calls.depth_scene(images, **options))

    async def dinov3(self, images: Any, **options: Any) -> Dinov3Response:
        """See :meth:`VisionClient.dinov3`."""
        return await self._send(self._calls.dinov3(images, **options))

    async def health(self) -> dict[str, Any]:
        """See :meth:`VisionClient.health`."""
        return await self._send(self._calls.health())

    async def models_status(self) -> list[ModelStatus]:
        """See :meth:`VisionClient.models_status`."""
        return await self._send(self._calls.models_status())

    async def load_model(self, model_type: str, **options: Any) -> ModelStatus:
        """See :meth:`VisionClient.load_model`."""
        return await self._send(self._calls.load_model(model_type, **options))

    async def unload_model(self, model_type: str, variant: str | None = None) -> UnloadResult:
        """See :meth:`VisionClient.unload_model`."""
        return await self._send(self._calls.unload_model(model_type, variant))

    async def submit_job(self, model_type: str, **body: Any) -> AsyncJob:
        """See :meth:`VisionClient.submit_job`."""
        info = await self._send(self._calls.submit_job(model_type, body))
        return AsyncJob(self, info)

    async def get_job(self, job_id: str) -> JobInfo:
        """See :meth:`VisionClient.get_job`."""
        return await self._send(self._calls.get_job(job_id))

    async def delete_job(self, job_id: str) -> None:
        """See :meth:`VisionClient.delete_job`."""
        await self._send(self._calls.delete_job(job_id))

    async def list_jobs(self, status: str | None = None, limit: int = 100) -> JobList:
        """See :meth:`VisionClient.list_jobs`."""
        return await self._send(self._calls.list_jobs(status, limit))


class Job:
    """A submitted job: :meth:`wait` polls until it completes or fails."""

    def __init__(self, client: VisionClient, info: JobInfo) -> None:
        self.client = client
        self.info = info
        self.job_id = info.job_id

    def refresh(self) -> JobInfo:
        """Fetch its current state."""
        self.info = self.client.get_job(self.job_id)
        return self.info

    def wait(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> JobInfo:
        """Poll until it is completed or failed; ``job_response(info)`` types the result.

        Raises:
            TimeoutError: Still pending or running after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while self.refresh().status not in FINAL_STATUSES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {self.info.status}")
            time.sleep(poll_s)
        return self.info

    def response(self, timeout_s: float = 300.0) -> InferenceResponse:
        """Wait, then the typed response (ValueError if the job failed)."""
        return job_response(self.wait(timeout_s))


class AsyncJob:
    """The asynchronous twin of :class:`Job`."""

    def __init__(self, client: AsyncVisionClient, info: JobInfo) -> None:
        self.client = client
        self.info = info
        self.job_id = info.job_id

    async def refresh(self) -> JobInfo:
        """Fetch its current state."""
        self.info = await self.client.get_job(self.job_id)
        return self.info

    async def wait(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> JobInfo:
        """See :meth:`Job.wait`."""
        deadline = time.monotonic() + timeout_s
        while (await self.refresh()).status not in FINAL_STATUSES:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {self.info.status}")
            await asyncio.sleep(poll_s)
        return self.info

    async def response(self, timeout_s: float = 300.0) -> InferenceResponse:
        """See :meth:`Job.response`."""
        return job_response(await self.wait(timeout_s))
