"""Job plumbing without a server: the queue codec, payloads, body validation, how a job's
state is read from Redis keys, and the CLI's refusals."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from arq.jobs import deserialize_job_raw, serialize_job, serialize_result
from arq.worker import JobExecutionFailed
from litestar.exceptions import ClientException, ValidationException

from service import cli
from service.images import ImageDecoder
from service.jobs import codec
from service.jobs.execution import decode_payload, encode_payload
from service.jobs.redis_store import Snapshot, arq_failure_reason, derive
from service.routes.intake import parse_body
from service.schemas.dinov3 import Dinov3Request
from service.settings import JobSettings
from service.urlfetch import UrlFetcher, UrlPolicy

ASSETS = Path(__file__).parents[1] / "assets"
SETTINGS = JobSettings(job_timeout_s=30, job_max_tries=3)


def _result(result: object, success: bool = False) -> bytes:
    data = serialize_result(
        "run_inference_job",
        (b"payload",),
        {},
        2,
        1_000,
        success,
        result,
        2_000,
        3_000,
        "ref",
        "q",
        "job",
        serializer=codec.serialize,
    )
    assert data is not None
    return data


def test_codec_is_msgpack_and_round_trips_a_job() -> None:
    raw = serialize_job(
        "run_inference_job", (b"\x00bytes",), {}, None, 123, serializer=codec.serialize
    )
    assert raw == msgspec.msgpack.encode(msgspec.msgpack.decode(raw))  # plain msgpack
    assert not raw.startswith(b"\x80")  # not a pickle
    function, args, kwargs, job_try, enqueued = deserialize_job_raw(
        raw, deserializer=codec.deserialize
    )
    assert (function, list(args), kwargs, job_try, enqueued) == (
        "run_inference_job",
        [b"\x00bytes"],
        {},
        None,
        123,
    )


def test_codec_writes_exceptions_as_text_and_drops_arguments_from_results() -> None:
    decoded = codec.deserialize(_result(JobExecutionFailed("max 3 retries exceeded")))
    assert decoded["r"] == {"exception": "JobExecutionFailed", "message": "max 3 retries exceeded"}
    assert decoded["a"] == []  # the payload is not kept with the result
    assert (
        codec.deserialize(_result(asyncio.CancelledError()))["r"]["exception"] == "CancelledError"
    )
    with pytest.raises(NotImplementedError):
        codec.serialize({"t": 1, "f": "x", "a": (object(),), "k": {}, "et": 0})


def test_payload_carries_the_validated_bytes_and_the_other_fields() -> None:
    data = (ASSETS / "chelsea.jpg").read_bytes()
    decoder = ImageDecoder(UrlFetcher(UrlPolicy.build(1, 1 << 20, 0, [])), 10**8)
    image = decoder.decode_bytes(0, data)
    request = Dinov3Request(
        images=[base64.b64encode(data).decode()], pooling="mean", normalize=False, variant="tiny"
    )
    raw = encode_payload("dinov3", request, [image, image])
    assert len(raw) < 2 * len(data) + 500  # bytes, not pixels, and no base64
    model_type, decoded, images = decode_payload(raw, {"dinov3": Dinov3Request})
    assert model_type == "dinov3" and images == [data, data]
    assert isinstance(decoded, Dinov3Request)
    assert (decoded.pooling, decoded.normalize, decoded.variant) == ("mean", False, "tiny")
    assert decoded.images == ["job-image:0", "job-image:1"]


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        (b'{"images": []}', "images", "Expected `array` of length >= 1"),
        (b'{"images": ["x"], "pooling": "max"}', "pooling", "Invalid enum value 'max'"),
        (b'{"images": [1]}', "images[0]", "Expected `str | object`, got `int`"),
        (b'{"images": ["x"], "extra": 1}', "data", "Object contains unknown field `extra`"),
    ],
)
def test_parse_body_reports_errors_like_litestar(body: bytes, key: str, message: str) -> None:
    with pytest.raises(ValidationException) as caught:
        parse_body("dinov3", Dinov3Request, body)
    assert caught.value.extra == [{"message": message, "key": key, "source": "body"}]


def test_parse_body_accepts_what_the_sync_endpoint_accepts() -> None:
    request = parse_body("dinov3", Dinov3Request, b'{"images": ["x"], "normalize": "false"}')
    assert isinstance(request, Dinov3Request) and request.normalize is False
    with pytest.raises(ClientException, match="malformed"):
        parse_body("dinov3", Dinov3Request, b"not json")


def _snapshot(
    status: str = "pending",
    *,
    in_progress: bool = False,
    score: float | None = None,
    arq_result: bytes | None = None,
    started_ms: int | None = None,
) -> Snapshot:
    fields: dict[str, bytes | None] = {
        "model_type": b"dinov3",
        "status": status.encode(),
        "created_ms": b"1000",
        "started_ms": str(started_ms).encode() if started_ms else None,
        "finished_ms": None,
        "attempts": b"1" if started_ms else b"0",
        "error": None,
    }
    return Snapshot("job", fields, None, in_progress, score, arq_result)


def test_derive_maps_redis_keys_to_the_api_statuses() -> None:
    job, ended = derive(_snapshot(score=1000.0), SETTINGS)
    assert (job.status, job.started_at, ended) == ("pending", None, None)
    assert job.created_at == datetime.fromtimestamp(1, UTC)
    # claimed by a worker that has not started it yet: still pending
    assert derive(_snapshot(in_progress=True, score=1000.0), SETTINGS)[0].status == "pending"
    job, _ = derive(_snapshot("running", in_progress=True, score=1000.0, started_ms=2000), SETTINGS)
    assert job.status == "running" and job.started_at == datetime.fromtimestamp(2, UTC)
    # its worker died and the claim expired, or it was re-queued on SIGTERM: pending again
    job, _ = derive(_snapshot("running", score=1000.0, started_ms=2000), SETTINGS)
    assert (job.status, job.started_at) == ("pending", None)
    # arq gave up on it: failed, with the reason, and a finish time to record
    job, ended = derive(
        _snapshot(
            "running",
            score=None,
            arq_result=_result(JobExecutionFailed("max 3 retries exceeded")),
            started_ms=2000,
        ),
        SETTINGS,
    )
    assert job.status == "failed" and "3 times" in (job.error or "") and ended == 3000
    # nowhere at all: failed rather than pending or running forever
    job, ended = derive(_snapshot("running", started_ms=2000), SETTINGS)
    assert job.status == "failed" and ended is not None
    job, ended = derive(_snapshot("completed"), SETTINGS)
    assert (job.status, ended) == ("completed", None)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"exception": "TimeoutError", "message": ""}, "longer than job_timeout_s (30 s)"),
        ({"exception": "CancelledError", "message": ""}, "cancelled"),
        (
            {"exception": "JobExecutionFailed", "message": "max 3 retries exceeded"},
            "started 3 times",
        ),
        ({"exception": "JobExecutionFailed", "message": "job expired"}, "expired"),
        ({"exception": "KeyError", "message": "'x'"}, "KeyError: 'x'"),
    ],
)
def test_arq_failure_reasons_are_plain_words(result: dict[str, str], expected: str) -> None:
    reason = arq_failure_reason(result, False, SETTINGS)
    assert expected in reason and "Traceback" not in reason


def test_serve_with_several_workers_needs_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VISION_API_REDIS_URL", raising=False)
    monkeypatch.setenv("VISION_API_CONFIG", "")  # cli.serve sets it; restored afterwards
    assert cli.main(["serve", "--workers", "2"]) == 2
    assert "VISION_API_REDIS_URL" in capsys.readouterr().err


def test_worker_without_redis_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VISION_API_REDIS_URL", raising=False)
    monkeypatch.delenv("VISION_API_CONFIG", raising=False)
    assert cli.main(["worker"]) == 2
    assert "VISION_API_REDIS_URL" in capsys.readouterr().err
