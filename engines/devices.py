"""Device discovery and resolution (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

from __future__ import annotations

from dataclasses import dataclass

from engines.errors import InvalidInputError


@dataclass(frozen=True)
class GpuInfo:
    """One visible GPU and its memory in MB."""

    index: int
    name: str
    memory_total_mb: float
    memory_used_mb: float
    memory_free_mb: float


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device (False where torch is not installed)."""
    if not torch_importable():
        return False
    import torch

    return torch.cuda.is_available()


def torch_importable() -> bool:
    """Whether torch can be imported in this process (the API layer does not need it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def list_gpus() -> list[GpuInfo] | None:
    """The visible GPUs with their memory use: empty without CUDA, None without torch."""
    if not torch_importable():
        return None
    if not cuda_available():
        return []
    import torch

    gpus = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        gpus.append(
            GpuInfo(
                index=index,
                name=torch.cuda.get_device_name(index),
                memory_total_mb=round(total / 2**20, 1),
                memory_used_mb=round((total - free) / 2**20, 1),
                memory_free_mb=round(free / 2**20, 1),
            )
        )
    return gpus


def resolve_device(requested: str) -> str:
    """Turn ``auto``/``cuda``/``cuda:N``/``cpu`` into a concrete torch device string.

    Raises:
        InvalidInputError: CUDA was asked for where there is none, or the index is out of range.
    """
    requested = requested.strip().lower()
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        return "cuda:0" if cuda_available() else "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not cuda_available():
            raise InvalidInputError(
                f"Device {requested!r} was requested but CUDA is not available on this server; "
                "use 'cpu' or 'auto'."
            )
        import torch

        index = 0 if requested == "cuda" else _parse_index(requested)
        if index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"Device {requested!r} does not exist: this server has "
                f"{torch.cuda.device_count()} GPU(s)."
            )
        return f"cuda:{index}"
    raise InvalidInputError(f"Unknown device {requested!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def _parse_index(device: str) -> int:
    try:
        return int(device.split(":", 1)[1])
    except ValueError:
        raise InvalidInputError(f"Unknown device {device!r}: use 'cuda:N'.") from None


def resolve_dtype(requested: str, device: str) -> str:
    """``auto`` is float16 on CUDA and float32 on CPU; explicit dtypes pass through."""
    if requested == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if requested not in ("float32", "float16", "bfloat16"):
        raise InvalidInputError(
            f"Unknown dtype {requested!r}: use auto, float32, float16 or bfloat16."
        )
    return requested


def cpu_bf16_units() -> bool:
    """Whether this CPU has native bf16 matrix units (AVX-512 BF16 or AMX), from /proc/cpuinfo.

    Without them torch emulates bf16 matrix products and runs them slower than float32.
    """
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
