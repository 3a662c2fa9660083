"""``{"image_id"}`` items: the schemas that take them, the handles they become, the job queue."""

from __future__ import annotations

import base64
import typing

import msgspec
import pytest

from engines.base import ImageHandle
from engines.errors import InvalidInputError
from engines.pool import ModelPool
from engines.registry import default_registry
from service.endpoints import discover_endpoints
from service.images import IMAGE_ID_PREFIX, DecodedImage, ImageDecoder
from service.jobs.execution import decode_payload, encode_payload
from service.schemas.common import ImageRef
from service.schemas.dinov3 import Dinov3Request
from service.schemas.sam3 import Sam3EmbedRequest, Sam3ImageRef, Sam3Request
from service.settings import Settings
from service.urlfetch import UrlFetcher, UrlPolicy
from service.wiring import pool_config
from tests.conftest import ASSETS, asset_b64

ID = "ab" * 32


@pytest.fixture
def decoder() -> ImageDecoder:
    return ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=10**8)


def image_item_type(request_type: type) -> type[ImageRef]:
    """The object form of an image item in a request schema (``images: list[str | X]``)."""
    (images,) = typing.get_args(typing.get_type_hints(request_type)["images"])
    (item,) = [t for t in typing.get_args(images) if isinstance(t, type) and t is not str]
    assert issubclass(item, ImageRef)
    return item


def test_only_families_that_accept_ids_have_schemas_that_take_them() -> None:
    registry = default_registry()
    endpoints = discover_endpoints(registry)
    accepting = {
        name
        for name, endpoint in endpoints.items()
        if image_item_type(endpoint.request).accepts_image_id
    }
    assert accepting == {f.name for f in registry if f.accepts_image_ids} == {"sam3"}
    assert image_item_type(Sam3EmbedRequest) is Sam3ImageRef


def test_an_image_id_outside_sam3_is_refused_by_the_schema() -> None:
    body = {"images": [{"image_id": ID}]}
    with pytest.raises(msgspec.ValidationError, match=r"accepted only by sam3.*\$\.images\[0\]"):
        msgspec.convert(body, Dinov3Request)
    request = msgspec.convert({**body, "prompts": ["cat"]}, Sam3Request)
    assert request.images == [Sam3ImageRef(image_id=ID)]


async def test_an_image_id_item_becomes_a_handle(decoder: ImageDecoder) -> None:
    handle, pixels = await decoder.decode_all(
        [Sam3ImageRef(image_id=ID), Sam3ImageRef(data=asset_b64("chelsea.jpg"))]
    )
    assert handle.image == ImageHandle(ID) and (handle.width, handle.height) == (None, None)
    assert (pixels.width, pixels.height) == (451, 300)
    with pytest.raises(InvalidInputError, match=r"exactly one of 'data', 'url' and 'image_id'"):
        await decoder.decode_all([Sam3ImageRef(image_id=ID, url="https://example.com/a.png")])
    with pytest.raises(InvalidInputError, match=r"exactly one of 'data', 'url' and 'image_id'"):
        await decoder.decode_all([Sam3ImageRef()])
    with pytest.raises(InvalidInputError, match=r"exactly one of 'data' and 'url'\."):
        await decoder.decode_all([ImageRef()])


async def test_client_bytes_are_never_read_as_an_id(decoder: ImageDecoder) -> None:
    forged = base64.b64encode(IMAGE_ID_PREFIX + ID.encode()).decode()
    with pytest.raises(InvalidInputError, match="not a decodable image"):
        await decoder.decode_all([forged])


def test_the_queue_carries_the_id_in_place_of_image_bytes(decoder: ImageDecoder) -> None:
    data = (ASSETS / "chelsea.jpg").read_bytes()
    images = [DecodedImage.of_id(ID), decoder.decode_bytes(1, data)]
    request = Sam3Request(
        images=[Sam3ImageRef(image_id=ID), base64.b64encode(data).decode()], prompts=["cat"]
    )
    raw = encode_payload("sam3", request, images)
    model_type, decoded, carried = decode_payload(raw, {"sam3": Sam3Request})
    assert model_type == "sam3" and decoded.prompts == ["cat"]
    assert carried == [IMAGE_ID_PREFIX + ID.encode(), data]
    handle, pixels = (decoder.decode_bytes(i, b) for i, b in enumerate(carried))
    assert handle.image == ImageHandle(ID)
    assert (pixels.width, pixels.height) == (451, 300)


@pytest.mark.parametrize(
    ("environ", "budget_mb", "ttl_s"),
    [
        ({}, None, 600.0),  # None: the family's default for the device
        ({"VISION_API_SAM3_CACHE_MB": "512", "VISION_API_SAM3_CACHE_TTL_S": "30"}, 512.0, 30.0),
        ({"VISION_API_SAM3_CACHE_MB": "0"}, 0.0, 600.0),
    ],
)
def test_the_cache_settings_reach_the_loader(
    environ: dict[str, str], budget_mb: float | None, ttl_s: float
) -> None:
    config = pool_config(Settings.load(environ=environ))
    assert (config.image_cache_mb, config.image_cache_ttl_s) == (budget_mb, ttl_s)
    loader = ModelPool(default_registry(), config).loader.config
    assert (loader.image_cache_mb, loader.image_cache_ttl_s) == (budget_mb, ttl_s)


@pytest.mark.parametrize(
    "environ", [{"VISION_API_SAM3_CACHE_MB": "-1"}, {"VISION_API_SAM3_CACHE_TTL_S": "0"}]
)
def test_bad_cache_settings_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="sam3_cache"):
        Settings.load(environ=environ)
