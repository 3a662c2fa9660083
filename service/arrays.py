"""Large numeric arrays in responses (depth maps, patch features) without a Python float each.

The pipelines hand such arrays over as numpy arrays. Written the obvious way — ``tolist()``,
then msgspec validating and encoding one Python float per value — a 512x512 float32 depth map
took ~3 ms to become a list, ~2 ms to validate and ~7 ms to encode, on the event loop and
holding the GIL. Here the response is validated with the arrays set aside, and the JSON
encoder writes each array with orjson's numpy serializer: 3.8 ms for the same map, the same
text values (each float32 widened to float64 and written in its shortest round-trip form, as
``tolist()`` + msgspec wrote it), so a job's result, which goes through msgpack as lists,
reads back exactly as the synchronous endpoint's answer.

Everything that is not JSON for a client (msgpack job results, ``to_builtins``) gets plain
lists through :func:`to_builtin`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import orjson

_ORJSON_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# One level of nesting below each result is as deep as the families put arrays
# (``results[i].depth``, ``results[i].patch_features.data``).
_MAX_DEPTH = 4


def encode_json(array: np.ndarray) -> msgspec.Raw:
    """An array as a JSON fragment: nested lists of numbers, as ``tolist()`` would give them.

    Floats are widened to float64 first: orjson writes float32 in float32's shortest form,
    which would read back as other doubles than the msgpack (job) path gives.
    """
    if array.dtype.kind == "f":
        array = np.ascontiguousarray(array, dtype=np.float64)
    elif not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return msgspec.Raw(orjson.dumps(array, option=_ORJSON_NUMPY))


def to_builtin(obj: Any) -> Any:
    """``enc_hook`` for msgpack and ``to_builtins``: arrays as nested lists."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise NotImplementedError(f"cannot serialise {type(obj).__name__}")


def convert(body: dict[str, Any], response_type: type[Any]) -> Any:
    """``msgspec.convert(body, response_type)``, numpy arrays kept as they are.

    Each array in ``body`` (a dict of dicts and lists) is swapped for an empty list while
    msgspec validates the rest, then set back on the converted response at the same place.
    """
    found: list[tuple[tuple[Any, ...], np.ndarray]] = []
    stripped = _strip(body, (), found)
    response = msgspec.convert(stripped, response_type)
    for path, array in found:
        parent = response
        for step in path[:-1]:
            parent = _child(parent, step)
        if isinstance(parent, dict):
            parent[path[-1]] = array
        else:
            setattr(parent, path[-1], array)
    return response


def _strip(value: Any, path: tuple[Any, ...], found: list[tuple[tuple[Any, ...], Any]]) -> Any:
    if isinstance(value, np.ndarray):
        found.append((path, value))
        return []
    if len(path) >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {key: _strip(item, (*path, key), found) for key, item in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):  # not numbers' lists
        return [_strip(item, (*path, index), found) for index, item in enumerate(value)]
    return value


def _child(parent: Any, step: Any) -> Any:
    if isinstance(step, int) or isinstance(parent, dict):
        return parent[step]
    return getattr(parent, step)
