"""Numpy arrays in responses (service/arrays.py): validated around, written as tolist() would."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import numpy as np
import pytest

from service.arrays import convert, encode_json, to_builtin
from service.schemas.depth_anything import DepthAnythingResponse


def body(depth: Any, **result: Any) -> dict[str, Any]:
    height, width = (1, 1) if isinstance(depth, str) else np.shape(depth)
    return {
        "model_type": "depth-anything",
        "variant": "v2-small",
        "engine": "torch",
        "device": "cpu",
        "timings_ms": dict.fromkeys(
            ("decode", "preprocess", "inference", "postprocess", "total"), 1.0
        ),
        "results": [
            {
                "width": width,
                "height": height,
                "kind": "relative",
                "units": None,
                "relation": "inverse",
                "min": 0.0,
                "max": 1.0,
                "depth": depth,
                **result,
            }
        ],
    }


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).random((37, 53), dtype=np.float32) * 10,
        (np.random.default_rng(1).random((64, 48), dtype=np.float32) - 0.5)[::2, 1::3] * 1e-6,
        np.random.default_rng(2).random((5, 7)),  # float64
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.array([[True, False]]),
    ],
)
def test_arrays_read_back_as_tolist_writes_them(array: np.ndarray) -> None:
    text = bytes(encode_json(array))
    assert json.loads(text) == json.loads(msgspec.json.encode(array.tolist()))


def test_convert_validates_the_rest_and_keeps_the_array() -> None:
    depth = np.ones((4, 6), np.float32)
    response = convert(body(depth), DepthAnythingResponse)
    assert isinstance(response, DepthAnythingResponse)
    assert response.results[0].depth is depth
    with pytest.raises(msgspec.ValidationError, match="relation"):
        convert(body(depth, relation="sideways"), DepthAnythingResponse)
    # a PNG string or plain lists go through msgspec as before
    assert convert(body("iVBOR"), DepthAnythingResponse).results[0].depth == "iVBOR"
    listed = convert(body(depth.tolist()), DepthAnythingResponse)
    assert listed.results[0].depth == depth.tolist()


def test_the_whole_response_encodes_as_with_lists() -> None:
    """The JSON a client reads is the JSON lists gave: arrays only change how it is written."""
    depth = np.random.default_rng(3).random((9, 11), dtype=np.float32)
    encoder = msgspec.json.Encoder(enc_hook=encode_json)
    with_array = encoder.encode(convert(body(depth), DepthAnythingResponse))
    with_lists = msgspec.json.encode(msgspec.convert(body(depth.tolist()), DepthAnythingResponse))
    assert json.loads(with_array) == json.loads(with_lists)
    packed = msgspec.msgpack.encode(
        convert(body(depth), DepthAnythingResponse), enc_hook=to_builtin
    )
    assert msgspec.msgpack.decode(packed) == json.loads(with_lists)


def test_to_builtin_refuses_what_it_does_not_know() -> None:
    assert to_builtin(np.zeros((2, 2))) == [[0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(NotImplementedError, match="object"):
        to_builtin(object())
