"""The inference endpoints, found from the family registry and checked against it at start-up.

Each family has a schema module ``service/schemas/<name>.py`` (``-`` → ``_``) that declares its
endpoint as ``ENDPOINT``. The request must be the family's options type extended with ``images``
and ``variant``: the pipeline reads the request as its options, so a schema that drifted from
the family would fail here, at start-up, instead of on some request.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping

import msgspec

from engines.base import Family
from engines.registry import FamilyRegistry
from service.schemas.common import Endpoint

REQUEST_FIELDS = ("images", "variant")


class EndpointMismatchError(RuntimeError):
    """The HTTP schemas and the family registry disagree (raised while building the app)."""


def schema_module_name(model_type: str) -> str:
    """Where the schema module of ``model_type`` lives (``grounding-dino`` → ``..._dino``)."""
    return f"service.schemas.{model_type.replace('-', '_')}"


def discover_endpoints(
    registry: FamilyRegistry, extra: Iterable[Endpoint] = ()
) -> dict[str, Endpoint]:
    """Every family's endpoints by name (``Endpoint.name``), checked against the family.

    Args:
        registry: The families served.
        extra: Endpoints declared elsewhere (a family outside this package, a test's).

    Raises:
        EndpointMismatchError: A family has no endpoint, or its request does not extend the
            family's options type with ``images`` and ``variant``, or an endpoint names no
            registered family.
    """
    given = {endpoint.name: endpoint for endpoint in extra}
    endpoints: dict[str, Endpoint] = {}
    for family in registry:
        endpoint = given.pop(family.name, None)
        tasks: list[Endpoint] = []
        if endpoint is None:
            endpoint, tasks = _declared(family.name)
        tasks += [given.pop(name) for name in list(given) if given[name].model_type == family.name]
        for declared in (endpoint, *tasks):
            check_endpoint(family, declared)
            endpoints[declared.name] = declared
        if missing := set(family.tasks) - {task.task for task in tasks}:
            raise EndpointMismatchError(
                f"{family.name} has tasks without an endpoint: {', '.join(sorted(missing))}."
            )
    if given:
        raise EndpointMismatchError(
            f"Endpoints for unregistered model types: {', '.join(sorted(given))}."
        )
    return endpoints


def _declared(model_type: str) -> tuple[Endpoint, list[Endpoint]]:
    """``ENDPOINT`` and ``TASK_ENDPOINTS`` of the family's schema module."""
    name = schema_module_name(model_type)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        raise EndpointMismatchError(
            f"Model family {model_type!r} is registered but has no schema module {name}."
        ) from None
    endpoint = getattr(module, "ENDPOINT", None)
    if not isinstance(endpoint, Endpoint):
        raise EndpointMismatchError(f"{name} does not define ENDPOINT = Endpoint(...).")
    tasks = list(getattr(module, "TASK_ENDPOINTS", ()))
    if not all(isinstance(task, Endpoint) and task.task for task in tasks):
        raise EndpointMismatchError(f"{name}: TASK_ENDPOINTS holds an Endpoint without a task.")
    return endpoint, tasks


def check_endpoint(family: Family, endpoint: Endpoint) -> None:
    """Raise :class:`EndpointMismatchError` unless ``endpoint`` fits ``family``."""
    where = f"the {endpoint.name} endpoint"
    if endpoint.model_type != family.name:
        raise EndpointMismatchError(
            f"{where} declares model_type {endpoint.model_type!r}, not {family.name!r}."
        )
    if endpoint.task is None:
        options = getattr(family, "options_type", None)
    elif endpoint.task in family.tasks:
        options = family.tasks[endpoint.task]
    else:
        raise EndpointMismatchError(f"{where}: {family.name} has no task {endpoint.task!r}.")
    if options is None or not issubclass(endpoint.request, options):
        raise EndpointMismatchError(
            f"{where}: request {endpoint.request.__name__} does not extend the family's "
            f"options type {getattr(options, '__name__', None)}."
        )
    fields = set(endpoint.request.__struct_fields__)
    extra = fields - set(options.__struct_fields__) - set(REQUEST_FIELDS)
    missing = set(REQUEST_FIELDS) - fields
    if missing or extra:
        raise EndpointMismatchError(
            f"{where}: request {endpoint.request.__name__} must be the options plus "
            f"{', '.join(REQUEST_FIELDS)} (missing: {sorted(missing)}, extra: {sorted(extra)})."
        )
    if endpoint.example:
        try:
            msgspec.convert(endpoint.example, endpoint.request)
        except msgspec.ValidationError as exc:
            raise EndpointMismatchError(f"{where}: its example does not validate: {exc}") from None


def request_types(endpoints: Mapping[str, Endpoint]) -> dict[str, type]:
    """Endpoint name → request Struct (the job codec and submission decode with it)."""
    return {name: endpoint.request for name, endpoint in endpoints.items()}
