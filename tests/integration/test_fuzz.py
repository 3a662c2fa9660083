"""Fuzzing the served OpenAPI schema with schemathesis: every operation, >= 1000 requests.

A real server (``vision-api serve`` on the tiny checkpoints, in-process jobs) answers
schema-valid and schema-breaking requests generated from its own ``/schema/openapi.json``.
Every answer must be documented: no 5xx, a status code the operation lists, a body that matches
the schema documented for that status, schema-breaking bodies refused with a 4xx.

``positive_data_acceptance`` (a schema-valid body must get a 2xx) is the one built-in check left
out: a body can be schema-valid and still name an image that is not there (a URL whose host does
not resolve, base64 that is not an image, an expired ``image_id``); the documented answer to it
is a 400 saying so. Generation is derandomized so a CI failure replays the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import asset_b64, free_port, stop_server

# Per operation and generation mode; operations without inputs stop after their one case.
MAX_EXAMPLES = 75
MIN_CASES = 1000


@pytest.fixture(scope="module")
def fuzz_server(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vision-api serve`` on tiny models, its log in a file (a pipe would fill and block)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("fuzz") / "server.log"
    env = {
        **os.environ,
        "VISION_API_REDIS_URL": "",
        # Generated URLs must fail fast where the network is unreachable.
        "VISION_API_URL_TIMEOUT_S": "2",
        "VISION_API_LOG_LEVEL": "warning",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(tiny_config)]
            + ["--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log_path)
        yield url
    finally:
        stop_server(proc)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def test_fuzz_every_operation_of_the_served_schema(fuzz_server: str) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]

    cases: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
                continue  # nothing to break
            try:
                _fuzz(operation, mode, fuzz_server, cases, statuses)
            except Unsatisfiable:
                # Negative mode on inputs nothing can break (a free-form string path
                # parameter): schemathesis generates no case. Positive mode always can.
                if mode is GenerationMode.POSITIVE:
                    failures.append(f"{operation.label}: no valid case could be generated")
            # schemathesis reports failures as a BaseExceptionGroup; one report per operation
            # and mode, then go on to the next.
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")

    total = sum(cases.values())
    print(f"fuzz: {total} cases over {len(cases)} operations; statuses {dict(statuses)}")
    assert not failures, "\n\n".join(failures)
    assert set(cases) == {op.label for op in operations}, "an operation was never called"
    assert total >= MIN_CASES, (total, cases)
    assert not [status for status in statuses if status >= 500], statuses
    # The server is still healthy after the barrage.
    assert httpx.get(f"{fuzz_server}/health", timeout=5).status_code == 200


def _fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    cases: Counter[str],
    statuses: Counter[int],
) -> None:
    """Up to ``MAX_EXAMPLES`` generated requests to ``operation``, each answer checked."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            base_url=base_url, timeout=30, excluded_checks=[positive_data_acceptance]
        )
        cases[operation.label] += 1
        statuses[response.status_code] += 1

    run()


def _has_inputs(operation: schemathesis.APIOperation) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


def test_success_answers_match_their_documented_schemas(fuzz_server: str) -> None:
    """Generated bodies cannot hold a real image; these do: each documented example with a
    real photo, every check on (a schema-valid body with a real image must be accepted), then
    the same body as a job, polled until it completes."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/schema/openapi.json")
    photo = asset_b64("chelsea.jpg")
    submit = schema["/jobs/submit/{model_type}"]["POST"]
    get_job = schema["/jobs/{job_id}"]["GET"]
    inference = [
        op
        for op in (r.ok() for r in schema.get_all_operations())
        if op.path.startswith("/inference/")
    ]
    assert len(inference) >= 5, [op.label for op in inference]
    for operation in inference:
        # A scene needs several views: as many photos as the documented example has.
        example = _documented_example(schema, operation)
        body = {**example, "images": [photo] * len(example["images"])}
        body.pop("variant", None)  # the tiny config serves each family's default variant only
        response = operation.Case(body=body, media_type="application/json").call_and_validate(
            base_url=fuzz_server, timeout=120
        )
        assert response.status_code == 200, (operation.label, response.text)
        model_type = operation.path.removeprefix("/inference/")
        if model_type == "depth-anything/scene":
            model_type = "depth-anything-scene"  # a scene's job name
        elif "/" in model_type:
            continue  # sam3/embed has no job of its own
        submitted = submit.Case(
            path_parameters={"model_type": model_type}, body=body, media_type="application/json"
        ).call_and_validate(base_url=fuzz_server, timeout=120)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        deadline = time.monotonic() + 120
        while True:
            job = get_job.Case(path_parameters={"job_id": job_id}).call_and_validate(
                base_url=fuzz_server, timeout=30
            )
            if job.json()["status"] in ("completed", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, job.text
            time.sleep(0.2)
        assert job.json()["status"] == "completed", job.text


def _documented_example(
    schema: schemathesis.BaseSchema, operation: schemathesis.APIOperation
) -> dict[str, object]:
    content = schema.raw_schema["paths"][operation.path]["post"]["requestBody"]["content"]
    examples = content["application/json"]["schema"]["examples"]
    return dict(examples[0])
