"""Typed settings, read once from ``VISION_API_*`` variables and an optional TOML file.

Precedence: built-in defaults < the TOML file < environment variables. Each scalar field of a
group is set by ``VISION_API_<FIELD>`` (field names are unique across groups), e.g.
``VISION_API_DEVICE=cuda`` or ``VISION_API_URL_ALLOWED_NETWORKS=10.0.0.0/8,192.168.1.0/24``.
Model variants come from the file only::

    [models.dinov3]
    default_variant = "vits16"
    [models.dinov3.variants.vits16]
    source = "facebook/dinov3-vits16-pretrain-lvd1689m"   # HF repo id or a local directory
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

PREFIX = "VISION_API_"


class ServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How uvicorn serves the app."""

    # Address uvicorn binds (0.0.0.0 in the container image).
    host: str = "127.0.0.1"
    # TCP port of the HTTP server.
    port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    # uvicorn processes; more than 1 needs redis_url (each process loads its own models).
    workers: Annotated[int, Meta(ge=1)] = 1
    # debug, info, warning, error or critical (uvicorn's and ours).
    log_level: str = "info"
    # json: one JSON object a line (for log collectors); text: for people reading a terminal.
    log_format: Literal["text", "json"] = "text"
    # On SIGTERM: how long in-flight requests and the in-process job worker's running jobs
    # may take to finish before the models are unloaded.
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 30.0


class LimitSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Request limits (413 beyond them)."""

    # More images in one request are a 413.
    max_images_per_request: Annotated[int, Meta(ge=1)] = 16
    # Larger images are a 413, judged from their header before decoding.
    max_image_pixels: Annotated[int, Meta(ge=1)] = 40_000_000
    # Larger bodies get a 413 before they are read (Content-Length first, else while streaming).
    max_body_mb: Annotated[float, Meta(gt=0)] = 64.0
    # More prompts in one request are a 413 (below each model's own bound: SAM3 32, GroundingDINO
    # 64); unset: only the model's bound.
    max_prompts_per_request: Annotated[int, Meta(ge=1)] | None = None
    # More views in one Depth Anything scene (POST /inference/depth-anything/scene) are a 413.
    max_scene_views: Annotated[int, Meta(ge=2)] = 16


class SecuritySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Who may call the API and how often (see ``service/security.py``)."""

    # Accepted API keys in clear; any key set makes every endpoint but /health* and the docs
    # need one (Authorization: Bearer KEY or X-API-Key: KEY).
    api_keys: list[str] = msgspec.field(default_factory=list)
    # A file of SHA-256 hex digests of accepted keys, one a line, # comments.
    api_keys_file: str | None = None
    # Origins allowed by CORS; none: no CORS headers at all.
    cors_origins: list[str] = msgspec.field(default_factory=list)
    # Requests per API key (per client address without keys), e.g. 120/minute; shared through
    # Redis when redis_url is set. Empty: no limit.
    rate_limit: (
        Annotated[str, Meta(pattern=r"^(\s*[1-9][0-9]*\s*/\s*(second|minute|hour)\s*)?$")] | None
    ) = None


class UrlSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fetching images by URL."""

    # Deadline for fetching one image URL, redirects included.
    url_timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    # Larger downloads are refused (413) while they stream.
    url_max_bytes: Annotated[int, Meta(ge=1)] = 25 * 2**20
    # Redirects followed per URL, each one checked by the guard again.
    url_max_redirects: Annotated[int, Meta(ge=0)] = 3
    # CIDRs URL inputs may reach although private (e.g. an internal image store).
    url_allowed_networks: list[str] = msgspec.field(default_factory=list)


class RuntimeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How models are loaded and run."""

    # auto (CUDA when available), cpu, cuda or cuda:N.
    device: str = "auto"
    # auto (float16 on CUDA; float32 on CPU, or bf16 where cpu_bf16 allows and its check
    # passes), float32, float16 or bfloat16.
    dtype: str = "auto"
    # auto (ONNX Runtime where a valid artifact exists, else torch; on a CPU with bf16 units,
    # with dtype auto, torch bf16 instead where it passes its gate and beats the artifact at
    # load), onnx or torch.
    engine: str = "auto"
    # torch intra-op threads; 0: the machine's cores.
    torch_threads: Annotated[int, Meta(ge=0)] = 0
    # Load a model at its first request; off: inference on an unloaded model is a 409.
    lazy_loading: bool = True
    # model[:variant] entries loaded and warmed at start-up (readiness waits for them).
    preload: list[str] = msgspec.field(default_factory=list)
    # None: each family's default for the device (8 on CPU, 32 on CUDA; GroundingDINO 1 / 8).
    max_batch_size: Annotated[int, Meta(ge=1)] | None = None
    # How long the oldest queued image waits for its batch to fill; None: 0 on CPU, 2 on CUDA.
    max_batch_delay_ms: Annotated[float, Meta(ge=0, le=1000)] | None = None
    # Forwards that may run at once in this process (pre/post-processing overlaps them).
    compute_workers: Annotated[int, Meta(ge=1)] = 1
    # glibc: serve large blocks from the heap and keep freed ones for the next forward instead
    # of mapping and zero-filling them anew each time (given back when a model unloads).
    keep_freed_memory: bool = True
    # Decode a large JPEG at 1/2, 1/4 or 1/8 scale where the model resizes it far smaller
    # anyway (DINOv3, Depth Anything V2 and V3; not with a visualisation), keeping at least
    # twice the model's input size per side; off: every pixel decoded, as the reference
    # processors do.
    shrink_on_load: bool = True
    # Resize DINOv3's images as 8-bit pixels (torch's vectorised uint8 kernel, torchvision's
    # order for uint8 images) instead of the float pixels its reference processor resizes:
    # 3-4x faster, each model input value within one grey level (0.25 on average); off: the
    # reference's float order. SAM3's reference resizes 8-bit pixels either way.
    uint8_resize: bool = True
    # Inference requests one loaded model takes at once; beyond it 503 with Retry-After.
    max_in_flight_per_model: Annotated[int, Meta(ge=1)] = 64
    # Most MB of model weights resident per device; least recently used models make room.
    memory_budget_mb: Annotated[float, Meta(gt=0)] | None = None
    # A model loaded more recently than this is not unloaded to make room (no thrashing).
    min_residency_s: Annotated[float, Meta(ge=0)] = 30.0
    # ONNX artifacts (vision-api export) and the TensorRT engine cache (.trt-cache/).
    artifacts_dir: str = "artifacts"
    # dtype auto on CPU: try bf16 weights where the CPU has bf16 matrix units (auto), always
    # (check: the gate and the timing still decide) or never (off).
    cpu_bf16: Literal["auto", "check", "off"] = "auto"
    # auto: the faster artifact whose recorded parity passed its gates (int8 on CPU, fp16 on
    # CUDA), else fp32.
    onnx_precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    # ONNX Runtime execution providers, tried in this order: tensorrt, cuda, cpu.
    ort_providers: list[str] = msgspec.field(default_factory=lambda: ["tensorrt", "cuda", "cpu"])
    # ONNX Runtime graph optimization level.
    ort_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # SAM3's image-embedding cache. None: 2048 MiB on CPU, 1024 MiB on CUDA (each ~19 images
    # at 1008² in the device's default dtype); 0 turns it off.
    sam3_cache_mb: Annotated[float, Meta(ge=0)] | None = None
    # Seconds an embedding is kept after its last use.
    sam3_cache_ttl_s: Annotated[float, Meta(gt=0)] = 600.0
    # Most views one Depth Anything scene forward may take on CPU, counted at process_res 504
    # (a view at process_res r counts (r / 504)²): all views attend to each other in one
    # forward, so a bigger scene is a 413 rather than an out-of-memory crash.
    scene_view_budget_cpu: Annotated[float, Meta(gt=0)] = 16.0
    # The same on a CUDA device.
    scene_view_budget_cuda: Annotated[float, Meta(gt=0)] = 32.0


class JobSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The async job queue."""

    # redis://[:password@]host:port/db: jobs through arq on Redis; unset: in-process jobs.
    redis_url: str | None = None
    # Jobs run at once per worker (or by the in-process backend).
    job_concurrency: Annotated[int, Meta(ge=1)] = 1
    # Finished jobs and their results are removed after this.
    job_retention_s: Annotated[float, Meta(gt=0)] = 3600.0
    # Jobs waiting or running beyond which a submission is a 503 with Retry-After.
    max_pending_jobs: Annotated[int, Meta(ge=1)] = 1000
    # The API process also runs an arq worker (one box, Redis configured).
    embedded_worker: bool = False
    # A job running longer fails; a dead worker's job is retried after this (+10 s).
    job_timeout_s: Annotated[float, Meta(gt=0)] = 3600.0
    # Starts of one job (after worker crashes) before it is recorded failed.
    job_max_tries: Annotated[int, Meta(ge=1)] = 3
    # Prefix of every Redis key: the arq queue <prefix>:queue, the job index and jobs.
    redis_key_prefix: str = "vision-api"
    # Test aid: each job sleeps this long after it starts running, so tests can observe the
    # running state and stop a worker mid-job. Leave at 0 in production.
    debug_job_delay_s: Annotated[float, Meta(ge=0)] = 0.0


class VariantConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A variant declared in the config file."""

    source: str
    license: str | None = None


class ModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One model type's section of the config file."""

    default_variant: str | None = None
    variants: dict[str, VariantConfig] = msgspec.field(default_factory=dict)
    max_batch_size: Annotated[int, Meta(ge=1)] | None = None
    max_batch_delay_ms: Annotated[float, Meta(ge=0, le=1000)] | None = None


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything configurable, grouped."""

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    urls: UrlSettings = msgspec.field(default_factory=UrlSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    jobs: JobSettings = msgspec.field(default_factory=JobSettings)
    models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
    config_file: str | None = None

    @property
    def hf_token(self) -> str | None:
        """``HF_TOKEN`` (or the older ``HUGGING_FACE_HUB_TOKEN``) for gated repos."""
        return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None

    @classmethod
    def load(
        cls, config_file: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read defaults, then the TOML file, then ``VISION_API_*`` variables.

        Args:
            config_file: A TOML file; defaults to ``VISION_API_CONFIG`` when set.
            environ: The environment to read (``os.environ`` by default).

        Raises:
            ValueError: The file or a variable holds something invalid (the message says which).
        """
        environ = os.environ if environ is None else environ
        config_file = config_file or environ.get(PREFIX + "CONFIG") or None
        raw: dict[str, Any] = {}
        if config_file:
            path = Path(config_file).expanduser()
            try:
                raw = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ValueError(f"Cannot read config file {path}: {exc}") from exc
            raw["config_file"] = str(path)
        for group, fields in _GROUP_FIELDS.items():
            for name, kind in fields.items():
                value = environ.get(PREFIX + name.upper())
                if value is not None:
                    raw.setdefault(group, {})[name] = _parse_env(value, kind)
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ValueError(f"Invalid settings: {exc}") from exc


def _parse_env(value: str, kind: Any) -> Any:
    if kind is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    if value == "" and kind is not str:
        return None
    return value


def _group_fields() -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for group_field in msgspec.structs.fields(Settings):
        if not isinstance(group_field.type, type) or not issubclass(
            group_field.type, msgspec.Struct
        ):
            continue
        groups[group_field.name] = {
            f.name: list if getattr(f.type, "__origin__", None) is list else str
            for f in msgspec.structs.fields(group_field.type)
        }
    return groups


_GROUP_FIELDS = _group_fields()
