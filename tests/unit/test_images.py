"""Decoding image inputs: forms, EXIF orientation, modes, limits."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engines.base import DeferredImage, ImageHandle
from engines.errors import InvalidInputError, PayloadTooLargeError
from service.images import ImageDecoder
from service.schemas.common import ImageRef
from service.schemas.sam3 import Sam3ImageRef
from service.urlfetch import UrlFetcher, UrlPolicy
from tests.conftest import ASSETS, asset_b64


@pytest.fixture
def decoder() -> ImageDecoder:
    return ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=1_000_000)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return base64.b64encode(buffer.getvalue()).decode()


async def test_forms(decoder: ImageDecoder) -> None:
    raw = asset_b64("chelsea.jpg")
    decoded = await decoder.decode_all(
        [raw, f"data:image/jpeg;base64,{raw}", ImageRef(data=raw), raw[:40] + "\n" + raw[40:]]
    )
    assert all((d.width, d.height) == (451, 300) for d in decoded)
    assert decoded[0].data == (ASSETS / "chelsea.jpg").read_bytes()
    assert all(d.image.mode == "RGB" for d in decoded)


async def test_exif_orientation_is_applied(decoder: ImageDecoder) -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    (decoded,) = await decoder.decode_all([encode(image, "JPEG", exif=exif)])
    assert (decoded.width, decoded.height) == (20, 40)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGBA", "PNG"),
        ("P", "GIF"),
        ("CMYK", "TIFF"),
        ("I;16", "PNG"),
        ("1", "BMP"),
        ("RGB", "WEBP"),
    ],
)
async def test_any_mode_becomes_rgb(decoder: ImageDecoder, mode: str, fmt: str) -> None:
    (decoded,) = await decoder.decode_all([encode(Image.new(mode, (16, 8)), fmt)])
    assert decoded.image.mode == "RGB" and decoded.image.size == (16, 8)


async def test_transparent_pixels_become_white(decoder: ImageDecoder) -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    (decoded,) = await decoder.decode_all([encode(image)])
    assert np.asarray(decoded.image).min() == 255


async def test_sixteen_bit_grey_keeps_its_range(decoder: ImageDecoder) -> None:
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    (decoded,) = await decoder.decode_all([encode(Image.fromarray(ramp))])
    pixels = np.asarray(decoded.image)[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255


async def test_pixel_limit(decoder: ImageDecoder) -> None:
    with pytest.raises(PayloadTooLargeError, match="images\\[1\\].*over the limit"):
        await decoder.decode_all([asset_b64("chelsea.jpg"), encode(Image.new("L", (1001, 1000)))])


# An item and what its error says: the same whether decoded at once or deferred to the pool.
BAD_ITEMS = [
    ("@@@", "not valid base64"),
    (base64.b64encode(b"GIF89a-but-not-really").decode(), "not a decodable image"),
    ("", "empty"),
    ("data:text/plain,hello", "base64 data URI"),
    (ImageRef(), "exactly one"),
    ("file:///etc/hosts", "scheme"),
]


@pytest.mark.parametrize(
    ("item", "message"),
    BAD_ITEMS,
)
async def test_bad_items(decoder: ImageDecoder, item: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await decoder.decode_all([item])  # type: ignore[list-item]


async def test_truncated_image(decoder: ImageDecoder) -> None:
    data = (ASSETS / "chelsea.jpg").read_bytes()[:2000]
    with pytest.raises(InvalidInputError, match="decodable"):
        await decoder.decode_all([base64.b64encode(data).decode()])


@pytest.mark.parametrize(
    ("item", "message"),
    BAD_ITEMS,
)
async def test_deferred_items_fail_as_decoded_ones_do(
    decoder: ImageDecoder, item: object, message: str
) -> None:
    """The item's shape fails at once; its bytes when the pool loads it: the same errors."""
    with pytest.raises(InvalidInputError, match=message):
        for deferred in await decoder.defer_all([item]):  # type: ignore[list-item]
            assert isinstance(deferred, DeferredImage)
            deferred.load()


async def test_deferred_items_load_the_same_pixels(decoder: ImageDecoder) -> None:
    items = [asset_b64("chelsea.jpg"), ImageRef(data=encode(Image.new("LA", (5, 4), (9, 0))))]
    decoded = await decoder.decode_all(items)
    deferred = await decoder.defer_all(items)
    for eager, lazy in zip(decoded, deferred, strict=True):
        assert isinstance(lazy, DeferredImage) and lazy.decode_ms == 0.0  # nothing decoded yet
        assert np.array_equal(np.asarray(lazy.load()), np.asarray(eager.image))
        assert lazy.decode_ms > 0
    (handle,) = await decoder.defer_all([Sam3ImageRef(image_id="abc")])
    assert handle == ImageHandle("abc")
    with pytest.raises(PayloadTooLargeError, match="images\\[0\\].*over the limit"):
        (big,) = await decoder.defer_all([encode(Image.new("L", (1001, 1000)))])
        assert isinstance(big, DeferredImage)
        big.load()
