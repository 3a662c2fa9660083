"""What the HTTP benchmarks share: server processes, request bodies, an async load generator.

- :class:`ServerProcess` starts a server as a subprocess on a free loopback port, waits for its
  ``/health`` (bounded), and stops it (terminate, then kill) however the benchmark ends;
  :func:`start_ours` and :func:`start_baseline` start our server and the seed-style baseline.
- :func:`request_bodies` builds the same requests for both servers from the real photos in
  ``tests/assets``.
- :func:`run_round` sends a fixed number of requests with a fixed number in flight and
  returns each latency and the wall time: the only loop that talks to a server, bounded by its
  request count and each request's timeout.
- :func:`machine` records what a figure was measured on (CPU model, cores, commit, load).

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PHOTOS = [
    ROOT / "tests" / "assets" / n
    for n in ("chelsea.jpg", "astronaut.png", "coffee.png", "rocket.jpg")
]
# family → the variant the benchmark checkpoints stand in for (benchmarks/checkpoints.py)
VARIANTS = {
    "dinov3": "vits16",
    "depth-anything": "v2-small",
    "grounding-dino": "tiny",
    "sam3": "sam3",
}
# (family, variant) → checkpoint name in benchmarks/checkpoints.py. DA3-small (variant
# "small") is served by the baseline through the official package, which only an environment
# with its inference dependencies has (bench_serving.py's docstring).
CHECKPOINT_NAMES = {
    ("dinov3", "vits16"): "dinov3",
    ("depth-anything", "v2-small"): "depth-anything-v2",
    ("depth-anything", "small"): "depth-anything",
    ("grounding-dino", "tiny"): "grounding-dino",
    ("sam3", "sam3"): "sam3",
}
SAM3_PROMPTS = ["cat", "dog", "person", "rocket", "flag", "coffee cup", "camera", "tree"]
GROUNDING_DINO_PROMPTS = ["a cat", "a person", "a rocket"]


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess on ``127.0.0.1:port``, its output in a log file."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        env: dict[str, str],
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115  (closed in stop)
            mode="w+", prefix=f"bench-{name}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll ``GET /health`` until it answers 200 (at most ``timeout_s``).

        Raises:
            RuntimeError: The process exited or did not answer in time (with its log's tail).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.process.returncode}):\n{self.tail()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Terminate the process (kill it if it does not stop within 10 s), drop the log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def start_ours(
    config: Path,
    env: dict[str, str],
    port: int | None = None,
    tree: Path = ROOT,
    name: str = "ours",
) -> ServerProcess:
    """``python -m service.cli serve --config CONFIG`` on a free port, without Redis.

    ``env`` adds to (or overrides) the benchmark's environment: ``VISION_API_*`` settings.
    Access logs are off (``VISION_API_LOG_LEVEL=warning``), as in the baseline. ``tree``: the
    source tree the server runs from (another commit's checkout for an A/B).
    """
    port = port or free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--config", str(config)]
    command += ["--host", HOST, "--port", str(port)]
    environ = {
        **os.environ,
        "VISION_API_REDIS_URL": "",
        "VISION_API_LOG_LEVEL": "warning",
        "TRANSFORMERS_VERBOSITY": "error",
        **env,
    }
    if tree != ROOT:  # the other tree's packages first, not the installed (editable) ones
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(tree), environ.get("PYTHONPATH")])
        )
    return ServerProcess(name, command, port, environ, cwd=tree)


def start_baseline(
    checkpoints: dict[str, Path], port: int | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """``benchmarks/baseline_server.py`` serving ``checkpoints`` (family → directory);
    ``env`` adds to its environment (``BASELINE_DA3_AUTOCAST=off``)."""
    port = port or free_port()
    command = [sys.executable, str(ROOT / "benchmarks" / "baseline_server.py")]
    command += ["--host", HOST, "--port", str(port)]
    for family, path in checkpoints.items():
        command += [f"--{family}", str(path)]
    environ = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", **(env or {})}
    return ServerProcess("baseline", command, port, environ)


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (``--ours-env``) as a dict.

    Raises:
        SystemExit: An item without ``=`` or without a key.
    """
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--ours-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks stop the servers."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def square_photo(path: Path, side: int = 512) -> bytes:
    """The photo centre-cropped to a square and resized to ``side``², as JPEG (quality 95)."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    short = min(image.size)
    left, top = (image.width - short) // 2, (image.height - short) // 2
    image = image.crop((left, top, left + short, top + short)).resize(
        (side, side), Image.Resampling.BICUBIC
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def request_bodies(family: str, variant: str | None = None) -> list[bytes]:
    """JSON bodies of one-image requests for ``family`` (``variant`` or the family's benchmark
    variant), one per photo; sent in rotation.

    DINOv3: each photo as a 512² JPEG, CLS embedding. Depth Anything: each photo as it is,
    depth as an array. GroundingDINO: each photo, three labels. SAM3: one photo with eight
    prompts, masks as RLE (dense masks would make the JSON the bottleneck).
    """
    variant = variant or VARIANTS[family]
    if family == "dinov3":
        return [
            json.dumps({"images": [_b64(square_photo(p))], "variant": variant}).encode()
            for p in PHOTOS
        ]
    if family == "depth-anything":
        return [
            json.dumps({"images": [_b64(p.read_bytes())], "variant": variant}).encode()
            for p in PHOTOS
        ]
    if family == "grounding-dino":
        return [
            json.dumps(
                {
                    "images": [_b64(p.read_bytes())],
                    "variant": variant,
                    "prompts": GROUNDING_DINO_PROMPTS,
                }
            ).encode()
            for p in PHOTOS
        ]
    if family == "sam3":
        body = {
            "images": [_b64(PHOTOS[0].read_bytes())],
            "variant": variant,
            "prompts": SAM3_PROMPTS,
            "output_format": "rle",
        }
        return [json.dumps(body).encode()]
    raise ValueError(f"no requests for {family!r}")


@dataclass
class Round:
    """One server's share of a round: every request's latency and the wall time."""

    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    images: int = 0


_TIMINGS = re.compile(rb'"timings_ms"\s*:\s*(\{[^{}]*\})')


def _server_timings(head: bytes) -> dict[str, float] | None:
    """``timings_ms`` from the start of a response body, without parsing the whole body.

    Both servers put it before ``results``; parsing a depth map's JSON on the client would
    take CPU from the servers under test.
    """
    match = _TIMINGS.search(head)
    return json.loads(match.group(1)) if match else None


async def run_round(
    client: httpx.AsyncClient,
    url: str,
    bodies: list[bytes],
    concurrency: int,
    requests: int,
    offset: int = 0,
) -> Round:
    """Send ``requests`` requests to ``url``, ``concurrency`` at a time, bodies in rotation.

    Request ``i`` carries ``bodies[(offset + i) % len(bodies)]``, so two servers given the
    same offset get the same sequence. Each request is bounded by the client's timeout; a
    failed request is recorded in ``errors`` (its latency is not).
    """
    result = Round()
    indices = iter(range(requests))

    async def lane() -> None:
        for i in indices:  # shared iterator: each index is taken by exactly one lane
            body = bodies[(offset + i) % len(bodies)]
            started = time.perf_counter()
            try:
                response = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
            except httpx.HTTPError as exc:
                result.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed_ms = (time.perf_counter() - started) * 1e3
            if response.status_code != 200:
                result.errors.append(f"{response.status_code}: {response.text[:300]}")
                continue
            result.latencies_ms.append(elapsed_ms)
            result.images += 1
            timings = _server_timings(response.content[:4096])
            if timings is not None:
                result.server_ms.append(timings)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result


async def interleaved_rounds(
    client: httpx.AsyncClient,
    urls: dict[str, str],
    bodies: dict[str, list[bytes]],
    concurrency: int,
    rounds: int,
    requests: int,
    pause_s: float,
    after_round: Callable[[], None] | None = None,
) -> dict[str, list[Round]]:
    """``rounds`` rounds of :func:`run_round` per server (name → URL), interleaved.

    Which server goes first alternates round by round, each round starts after ``pause_s``
    (the other server's thread pools settle), and in a round every server gets the same
    requests in the same order (``bodies[name]`` from the same offset), so the machine's slow
    stretches hit all of them. ``after_round`` runs after each round (a load reading).
    """
    names = list(urls)
    result: dict[str, list[Round]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            await asyncio.sleep(pause_s)
            result[name].append(
                await run_round(
                    client, urls[name], bodies[name], concurrency, requests, round_ * requests
                )
            )
        if after_round is not None:
            after_round()
    return result


def interleaved_calls(
    runs: Mapping[str, Callable[[], Any]], rounds: int, per_turn: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each run, in-process: one untimed call of each, then ``rounds``
    turns each in A B B A order (a drifting machine slows all alike), ``per_turn`` calls back
    to back per turn."""
    names = list(runs)
    for name in names:
        runs[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            for _ in range(per_turn):
                started = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - started)
    return seconds


def write_report(
    path: Path | None,
    benchmark: str,
    started: float,
    fields: dict[str, Any],
    results: dict[str, Any],
    machine_info: dict[str, Any] | None = None,
) -> None:
    """Write a benchmark's JSON report to ``path`` (nothing without one).

    The report: the program's name, its command line, :func:`machine` (or ``machine_info``
    already read), the run's ``fields``, the wall time since ``started`` (a
    ``time.perf_counter()`` reading), then the ``results`` (``rows``...).
    """
    if path is None:
        return
    report = {
        "benchmark": benchmark,
        "command": " ".join(sys.argv),
        "machine": machine_info or machine(),
        **fields,
        "wall_s": round(time.perf_counter() - started, 1),
        **results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(rounds: list[Round]) -> dict[str, Any]:
    """Latency percentiles and images per second over a server's rounds at one concurrency."""
    latencies = [ms for r in rounds for ms in r.latencies_ms]
    wall = sum(r.wall_s for r in rounds)
    images = sum(r.images for r in rounds)
    server = [t for r in rounds for t in r.server_ms]
    return {
        "requests": len(latencies),
        "errors": [e for r in rounds for e in r.errors][:5],
        "error_count": sum(len(r.errors) for r in rounds),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "images_per_s": images / wall if wall else float("nan"),
        "images_per_s_by_round": [r.images / r.wall_s if r.wall_s else None for r in rounds],
        "server_inference_p50_ms": percentile([t["inference"] for t in server], 50),
        "server_total_p50_ms": percentile([t["total"] for t in server], 50),
    }


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    """What the figures were measured on, and when."""
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD").strip(),
        # Files that differ from the commit when measured (several people edit this tree).
        "uncommitted": [line[3:] for line in _git("status", "--porcelain").splitlines() if line],
        "load_avg_1min": os.getloadavg()[0],
    }


def model_status(url: str, family: str, variant: str) -> dict[str, Any] | None:
    """Our server's ``/models/status`` entry for one variant (engine, dtype, ...)."""
    try:
        models = httpx.get(url + "/models/status", timeout=10).json()["models"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return next((m for m in models if m["model_type"] == family and m["variant"] == variant), None)
