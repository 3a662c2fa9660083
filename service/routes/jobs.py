"""``/jobs``: async job submission and polling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import (
    Example,
    OpenAPIMediaType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.params import FromPath, Parameter

from service.inference import InferenceService
from service.jobs.base import JobBackend
from service.routes.intake import validate_submission
from service.routes.responses import error_responses
from service.schemas.common import Endpoint
from service.schemas.jobs import Job, JobList, JobStatus, JobSubmitted


def jobs_router(endpoints: Iterable[Endpoint]) -> Router:
    """``/jobs``; the submit body is documented as one of ``endpoints``' request bodies."""
    # anyOf, not oneOf: a body can be valid for several model types (images alone is).
    endpoints = list(endpoints)
    refs = [Reference(f"#/components/schemas/{e.request.__name__}") for e in endpoints]
    examples = {
        e.name: Example(summary=f"{e.name}: {e.example_summary}", value=e.example)
        for e in endpoints
    }

    @dataclass
    class SubmitOperation(Operation):
        """The submit operation, with its body documented (the route reads it as raw bytes)."""

        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                required=True,
                description="The body of POST /inference/{model_type} for the same model type "
                "(depth-anything-scene: of POST /inference/depth-anything/scene).",
                content={
                    "application/json": OpenAPIMediaType(
                        schema=Schema(any_of=refs), examples=dict(examples)
                    )
                },
            )

    return Router(
        path="/jobs",
        route_handlers=[
            post(
                "/submit/{model_type:str}",
                status_code=202,
                summary="Queue an inference job",
                description="The body is the one of POST /inference/{model_type}, validated "
                "(images fetched and decoded) before anything is queued: a bad body is a 400 "
                "here, not a failed job. 503 with Retry-After when the queue is full or the job "
                "store is down.",
                operation_class=SubmitOperation,
                responses=error_responses(400, 404, 409, 413, 503),
            )(submit),
            get_job,
            delete_job,
            list_jobs,
        ],
        tags=["jobs"],
    )


async def submit(
    model_type: Annotated[
        str,
        Parameter(
            description="sam3, grounding-dino, depth-anything or dinov3 (aliases "
            "grounding_dino, depth_anything), or depth-anything-scene (the body of POST "
            "/inference/depth-anything/scene)."
        ),
    ],
    request: Request,
    inference: NamedDependency[InferenceService],
    jobs: NamedDependency[JobBackend],
) -> JobSubmitted:
    """Validate like the synchronous endpoint, then enqueue."""
    endpoint, _, data, images = await validate_submission(
        inference, model_type, await request.body()
    )
    return await jobs.submit(endpoint.name, data, images)


@get(
    "/{job_id:str}",
    summary="A job's status, and its result once completed",
    responses=error_responses(400, 404, 503),
)
async def get_job(job_id: FromPath[str], jobs: NamedDependency[JobBackend]) -> Job:
    """404 for an unknown job, or one past its retention time."""
    return await jobs.get(job_id)


@delete(
    "/{job_id:str}",
    status_code=204,
    summary="Cancel a job, or forget a finished one",
    responses=error_responses(400, 404, 503),
)
async def delete_job(job_id: FromPath[str], jobs: NamedDependency[JobBackend]) -> None:
    """Cancel a pending or running job, or remove a finished one."""
    await jobs.delete(job_id)


@get("/", summary="Jobs, newest first", responses=error_responses(400, 503))
async def list_jobs(
    jobs: NamedDependency[JobBackend],
    status: Annotated[JobStatus | None, Parameter(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Parameter(ge=1, le=1000, description="Most jobs returned.")] = 100,
) -> JobList:
    """Entries without their result; ``total`` counts every match."""
    return await jobs.list(status, limit)
