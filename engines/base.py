"""The engine contract: how a model family plugs into the pool.

A request flows as ``prepare`` (per image, CPU) → ``forward`` (one batched call into the
runtime's core) → ``postprocess`` (per image). Only the core differs between runtimes: a
:class:`Core` maps named graphs (``"model"``, or ``"vision"``/``"text"``/``"decoder"`` for
families split into several) from numpy inputs to numpy outputs, on torch or ONNX Runtime.
Everything around it lives in the family's module and is shared by both runtimes.
"""

from __future__ import annotations

import abc
import importlib
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import numpy as np
from PIL import Image

Arrays = dict[str, np.ndarray]

# ``(source width, source height) -> (width, height)`` the pre-processing resizes the image to,
# or None where it reads every pixel: :meth:`Pipeline.decode_size` bound to a request's options.
SizeHint = Callable[[int, int], "tuple[int, int] | None"]


@dataclass(frozen=True)
class VariantSpec:
    """One named checkpoint of a model family.

    Attributes:
        name: The variant's name in the API (``vits16``, ``small``...).
        source: A Hugging Face repo id or a local directory.
        license: The checkpoint's licence, as shown in ``/models/status``.
    """

    name: str
    source: str
    license: str = "unknown"


@dataclass(frozen=True)
class LoadRequest:
    """Where and how to load one variant.

    Attributes:
        spec: The variant to load.
        device: A resolved torch device string (``cpu``, ``cuda:0``).
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        torch_threads: Intra-op threads for torch on CPU.
        hf_token: Token for gated repos, or None.
        image_cache_mb: Budget of the family's per-image cache, for families that keep one
            (SAM3: image embeddings); 0 keeps none, None takes the family's default for the
            device.
        image_cache_ttl_s: Seconds an unused entry of that cache is kept.
        uint8_resize: Resize images as 8-bit pixels (torch's vectorised uint8 kernel) where the
            family's reference processor resizes float ones (DINOv3, bilinear): 3-4x faster,
            each model input value within one grey level of the reference's (0.25 on
            average). False: the reference's float order. Families whose reference resizes
            8-bit pixels (SAM3) do so either way.
    """

    spec: VariantSpec
    device: str
    dtype: str
    torch_threads: int
    hf_token: str | None = None
    image_cache_mb: float | None = 0.0
    image_cache_ttl_s: float = 600.0
    uint8_resize: bool = True


class CacheStats(msgspec.Struct, frozen=True, kw_only=True):
    """What a pipeline's cache holds and how it has served (``/models/status``'s ``cache``).

    Attributes:
        entries: Items held now.
        bytes: Bytes they take (on the device they live on).
        budget_bytes: The most bytes the cache may hold.
        hits: Lookups answered from the cache.
        misses: Lookups that had to compute.
        evictions: Items dropped for room or age.
    """

    entries: int
    bytes: int
    budget_bytes: int
    hits: int
    misses: int
    evictions: int


@dataclass(frozen=True)
class ImageHandle:
    """An image a family already holds (its cache), given in place of pixels.

    Families that accept handles (``Family.accepts_image_ids``) read it in ``prepare``; the
    pool passes it through like any image.

    Attributes:
        image_id: The id the family returned when it took the image.
    """

    image_id: str


class DeferredImage:
    """An image decoded where it is first needed: on the thread that pre-processes it.

    The service hands a loaded model's images to the pool this way, so decoding and
    pre-processing share one hop to a worker thread instead of two, and the decoder can learn
    what size the model will resize the image to (a large JPEG is then decoded at a reduced
    scale). The pool calls :meth:`load` before ``prepare``; pipelines only ever see the decoded
    image. ``decode`` raises the request's own errors (a 400 for bytes that are not an image, a
    413 over the pixel limit).

    Args:
        decode: Returns the decoded RGB image, given the pipeline's size hint (or None).
    """

    __slots__ = ("_decode", "decode_ms")

    def __init__(self, decode: Callable[[SizeHint | None], Image.Image]) -> None:
        self._decode = decode
        self.decode_ms = 0.0

    def load(self, hint: SizeHint | None = None) -> Image.Image:
        """Decode now; how long it took is kept in ``decode_ms``."""
        started = time.perf_counter()
        try:
            return self._decode(hint)
        finally:
            self.decode_ms = (time.perf_counter() - started) * 1e3


class Core(Protocol):
    """The runtime-specific step: named graphs from numpy arrays to numpy arrays."""

    engine: str

    def run(self, graph: str, inputs: Mapping[str, Any], *, host: bool = True) -> dict[str, Any]:
        """Run one graph on batched inputs.

        With ``host=False`` a runtime may return its native device arrays (torch tensors on
        the GPU) so that a pipeline can chain graphs without a round trip through host
        memory; pass them back as inputs and use :func:`to_host` on what it reads itself.
        """
        ...

    def memory_bytes(self) -> int:
        """Bytes of weights and buffers held by this core."""
        ...

    def close(self) -> None:
        """Release the weights (the pool drops its reference afterwards)."""
        ...


def to_host(array: Any) -> np.ndarray:
    """A numpy array of ``array`` (a numpy array, or a torch tensor on any device)."""
    if isinstance(array, np.ndarray):
        return array
    tensor = array.detach()
    if tensor.is_floating_point() and tensor.element_size() < 4:
        tensor = tensor.float()
    return tensor.cpu().numpy()


@dataclass
class Prepared:
    """One pre-processed image.

    Attributes:
        arrays: The network inputs for this image, without a batch axis.
        width: Width of the input image as sent (``engines.images.source_size``: also where
            it was decoded at a reduced scale).
        height: Its height, likewise.
        extra: Whatever post-processing needs (scales, padding...).
    """

    arrays: Arrays
    width: int
    height: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_key(self) -> Hashable:
        """Images with equal keys can share one forward (same input shapes)."""
        return tuple((name, a.shape) for name, a in sorted(self.arrays.items()))


OptionsT = TypeVar("OptionsT")


def batches(prepared: Sequence[Prepared], max_batch_size: int) -> list[list[int]]:
    """Indices of consecutive images that can share one forward, at most ``max_batch_size``."""
    groups: list[list[int]] = []
    for index, item in enumerate(prepared):
        last = groups[-1] if groups else None
        if (
            last is not None
            and len(last) < max_batch_size
            and prepared[last[0]].batch_key == item.batch_key
        ):
            last.append(index)
        else:
            groups.append([index])
    return groups


def run_pipeline(
    pipeline: Pipeline[Any], images: Sequence[Image.Image], options: Any, max_batch_size: int = 8
) -> list[dict[str, Any]]:
    """Run a pipeline synchronously in this thread (export checks, benchmarks, workers)."""
    prepared = [pipeline.prepare(image, options) for image in images]
    raw: list[Any] = [None] * len(prepared)
    for group in batches(prepared, max_batch_size):
        for index, out in zip(
            group, pipeline.forward([prepared[i] for i in group], options), strict=True
        ):
            raw[index] = out
    return [pipeline.postprocess(r, p, options) for r, p in zip(raw, prepared, strict=True)]


def run_task(
    pipeline: Pipeline[Any], task: str, images: Sequence[Image.Image], options: Any
) -> dict[str, Any]:
    """Run a pipeline's task synchronously in this thread (export checks, benchmarks)."""
    runner = pipeline.task(task)
    prepared = runner.prepare(images, options)
    return runner.postprocess(runner.forward(prepared, options), prepared, options)


class Task(abc.ABC, Generic[OptionsT]):
    """A computation over all of a request's images at once: one forward, one result.

    Per-image work goes through :class:`Pipeline`'s prepare / forward / postprocess, with
    images batched across requests; a task (a Depth Anything 3 scene: views that attend to each
    other) needs every image of the request in the same forward, so it is never batched with
    other requests. The pool runs ``prepare`` and ``postprocess`` on its helper threads and
    ``forward`` on a compute thread, like a pipeline's steps.
    """

    @abc.abstractmethod
    def prepare(self, images: Sequence[Image.Image], options: OptionsT) -> Any:
        """Pre-process the request's images (CPU, thread-safe)."""

    @abc.abstractmethod
    def forward(self, prepared: Any, options: OptionsT) -> Any:
        """Run the core once on everything ``prepare`` returned."""

    @abc.abstractmethod
    def postprocess(self, raw: Any, prepared: Any, options: OptionsT) -> dict[str, Any]:
        """The request's JSON-ready result (CPU, thread-safe)."""


class Pipeline(abc.ABC, Generic[OptionsT]):
    """A loaded variant: its family's pre/post-processing around a :class:`Core`.

    ``options`` is an instance of the family's ``options_type`` (the HTTP request, which extends
    it, is passed as is).
    """

    def __init__(self, core: Core, checkpoint_dir: Path | None = None) -> None:
        self.core = core
        self.checkpoint_dir = checkpoint_dir

    @abc.abstractmethod
    def prepare(self, image: Image.Image, options: OptionsT) -> Prepared:
        """Pre-process one RGB image (CPU, thread-safe)."""

    @abc.abstractmethod
    def forward(self, batch: Sequence[Prepared], options: OptionsT) -> list[Any]:
        """Run the core on a batch of images sharing a ``batch_key``; one raw output each."""

    @abc.abstractmethod
    def postprocess(self, raw: Any, prepared: Prepared, options: OptionsT) -> dict[str, Any]:
        """Turn one image's raw output into its JSON-ready result (CPU, thread-safe)."""

    def decode_size(self, width: int, height: int, options: OptionsT) -> tuple[int, int] | None:
        """The ``(width, height)`` pre-processing resizes a ``width`` x ``height`` image to.

        Only for a request that reads nothing but that resized image: the decoder may then
        decode a large JPEG at a reduced DCT scale that keeps at least twice this size per side
        (:func:`engines.images.shrink_on_load`), and the pipeline takes the size the image was
        sent at from :func:`engines.images.source_size`. None (the default): the request needs
        the image's own pixels (a visualisation, masks or boxes at full resolution, a cache
        keyed by the pixels).
        """
        return None

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Run once after loading so the first request does not pay for lazy set-up."""

    def task(self, name: str) -> Task[Any]:
        """The loaded variant's :class:`Task` called ``name`` (see ``Family.tasks``).

        Raises:
            InvalidInputError: This variant cannot run that task.
        """
        from engines.errors import InvalidInputError

        raise InvalidInputError(f"This model has no {name} task.")

    def cache_stats(self) -> CacheStats | None:
        """The family's cache counters (``/models/status``), or None where it keeps none."""
        return None

    def reset_caches(self) -> None:  # noqa: B027 - optional hook
        """Forget what the family's caches hold, counters too (the bf16 check's runs)."""

    def close(self) -> None:
        """Release what the pipeline holds (its caches, then the core's weights): on unload."""
        self.core.close()


@dataclass
class OnnxGraph:
    """How to export one graph of a loaded torch pipeline.

    Attributes:
        name: The core's graph name.
        inputs: Example inputs by name (batch >= 2, so no exporter can fix the batch axis).
        outputs: Output names, in order.
        dynamic_axes: Per input/output name, axis index → axis label.
    """

    name: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]


class Family(abc.ABC):
    """A model family as served: its variants, its options and how to load a variant.

    Everything else a family has lives beside this class in its package
    (``engines/families/<name>/``) and is found by convention: ``export.py`` defines
    ``EXPORT`` (a :class:`FamilyExport`), ``tiny.py`` defines ``write_tiny``. Serving code never
    imports either. A family that implements :meth:`load_onnx` can be served from exported
    graphs; graphs an artifact lacks keep running on torch.

    Attributes:
        name: The canonical model type (``dinov3``, ``grounding-dino``...).
        aliases: Other accepted spellings of the model type.
        default_variant: The variant used when a request names none.
        variants: The built-in variants by name.
        graphs: The core's graph names.
        options_type: The family's options (a msgspec Struct); the HTTP request of its
            endpoint extends it with ``images`` and ``variant``.
        accepts_image_ids: Whether ``prepare`` takes an :class:`ImageHandle` in place of pixels.
        tasks: Whole-request tasks the family's pipelines run (:meth:`Pipeline.task`), by
            name, with their options types.
        max_batch_size: The default most images in one forward, by device kind (``cpu``,
            ``cuda``); settings override it.
    """

    name: str
    aliases: tuple[str, ...] = ()
    default_variant: str
    variants: Mapping[str, VariantSpec]
    graphs: tuple[str, ...] = ("model",)
    options_type: type[Any]
    accepts_image_ids: bool = False
    # Most images in one forward by device kind, unless the settings say otherwise.
    max_batch_size: Mapping[str, int] = {"cpu": 8, "cuda": 32}
    # The bf16 check on CPU: metric → (">=" or "<=", limit) against the float32 run; a family
    # without gates always runs float32 on CPU.
    precision_gates: Mapping[str, tuple[str, float]] = {}
    # The shipped photos (engines/assets) the bf16 check runs on.
    precision_photos: tuple[str, ...] = ("chelsea.jpg", "astronaut.jpg")
    # Whole-request tasks (``Task``) beside the per-image endpoint: name → options type.
    tasks: Mapping[str, type[Any]] = {}

    def check_task(  # noqa: B027 - optional hook
        self, task: str, images: int, options: Any, device_kind: str, budget: float | None
    ) -> None:
        """Refuse a task request that the device's ``budget`` (settings) cannot take.

        Called before any image is decoded, and again on the device the model runs on.

        Raises:
            PayloadTooLargeError: The request exceeds the budget (413).
        """

    def precision_options(self) -> Any:
        """The options the bf16 check runs with (the family's defaults unless it needs more)."""
        return self.options_type()

    def precision_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Compare a bf16 run's results with float32's (keys as in ``precision_gates``)."""
        raise NotImplementedError(f"{self.name} has no precision check")

    def load_onnx(self, request: LoadRequest, core: Core) -> Pipeline[Any]:
        """Build the family's pipeline around an ONNX (or hybrid) core."""
        raise NotImplementedError(f"{self.name} cannot be served from ONNX yet")

    def check_options(self, spec: VariantSpec, hf_token: str | None, options: Any) -> None:  # noqa: B027
        """Check what only the checkpoint can tell (a prompt's token count), without the model.

        Run when a job is submitted, so that such a request fails at once with a 400 instead of
        as a job later. The default checks nothing.

        Raises:
            InvalidInputError: The options do not fit this checkpoint.
        """

    @property
    def serves_onnx(self) -> bool:
        """Whether this family overrides :meth:`load_onnx`."""
        return type(self).load_onnx is not Family.load_onnx

    @abc.abstractmethod
    def load_torch(self, request: LoadRequest) -> Pipeline[Any]:
        """Load a variant on the torch runtime."""


class FamilyExport(abc.ABC):
    """How a family is exported to ONNX and how an export is checked against torch.

    Each family's ``export.py`` defines one as ``EXPORT``; the export stage finds it with
    :func:`family_export`.

    Attributes:
        parity_gates: Metric name → (``">="`` or ``"<="``, threshold).
    """

    parity_gates: Mapping[str, tuple[str, float]] = {}

    @abc.abstractmethod
    def graphs(self, pipeline: Pipeline[Any]) -> list[OnnxGraph]:
        """The graphs to export from a torch-loaded pipeline, with example inputs."""

    @abc.abstractmethod
    def parity_options(self) -> list[Any]:
        """Options (of the family's ``options_type``) the parity check runs with."""

    @abc.abstractmethod
    def parity_metrics(
        self, reference: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
    ) -> dict[str, float]:
        """Compare two runs' results (same images, same options); keys match the gates."""

    def task_parity_options(self, images: Sequence[Image.Image]) -> list[tuple[str, Any]]:
        """``(task, options)`` runs of the family's tasks the parity check adds, on all photos.

        A checkpoint whose pipeline lacks the task (``Pipeline.task`` refuses) skips them.
        """
        return []

    def task_parity_metrics(
        self, task: str, reference: dict[str, Any], candidate: dict[str, Any]
    ) -> dict[str, float]:
        """Compare two runs of ``task``; keys match the gates."""
        raise NotImplementedError(f"no parity metrics for task {task}")


TinyWriter = Callable[[Path], dict[str, str]]


def family_module(family: Family, part: str) -> ModuleType | None:
    """The module ``part`` (``export``, ``tiny``) of ``family``'s package, or None if absent."""
    package = type(family).__module__.rpartition(".")[0]
    name = f"{package}.{part}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def family_export(family: Family) -> FamilyExport | None:
    """The family's :class:`FamilyExport` (``EXPORT`` in its ``export.py``), or None."""
    module = family_module(family, "export")
    return getattr(module, "EXPORT", None) if module is not None else None


def family_tiny_writer(family: Family) -> TinyWriter | None:
    """The family's ``write_tiny(directory) -> {variant: subdir}`` (its ``tiny.py``), or None.

    The first variant it returns becomes the default in the generated config.
    """
    module = family_module(family, "tiny")
    return getattr(module, "write_tiny", None) if module is not None else None
