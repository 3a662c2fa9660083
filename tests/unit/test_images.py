"""Decoding image inputs: forms, EXIF orientation, modes, limits."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engines.base import DeferredImage, ImageHandle
from engines.errors import InvalidInputError, PayloadTooLargeError
from engines.images import SOURCE_SIZE, resize_normalize, source_size
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


def jpeg_bytes(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def large_photo() -> Image.Image:
    """A real photo enlarged to a phone camera's 4:3 frame (2048x1536)."""
    return Image.open(ASSETS / "astronaut.png").convert("RGB").resize((2048, 1536), Image.BICUBIC)


def model_224(width: int, height: int) -> tuple[int, int]:
    return 224, 224


def test_a_large_jpeg_decodes_at_the_scale_its_model_needs(large_photo: Image.Image) -> None:
    decoder = ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=40_000_000)
    data = jpeg_bytes(large_photo)
    full = decoder.decode_pixels(0, data).image
    shrunk = decoder.decode_pixels(0, data, model_224).image
    assert isinstance(full, Image.Image) and isinstance(shrunk, Image.Image)
    # 1/2 is the smallest DCT scale that keeps twice 224 on both sides (1/4: 512x384).
    assert full.size == (2048, 1536) and shrunk.size == (1024, 768)
    assert source_size(shrunk) == (2048, 1536) and source_size(full) == (2048, 1536)
    assert SOURCE_SIZE not in full.info
    # What the model sees after its own resize: a fraction of a grey level apart on average.
    seen_full = resize_normalize(full, (224, 224), rescale_factor=None)
    seen_shrunk = resize_normalize(shrunk, (224, 224), rescale_factor=None)
    difference = np.abs(seen_full - seen_shrunk)
    assert difference.mean() < 0.5 and np.percentile(difference, 99) < 3
    # A smaller model input allows a smaller scale: 1/4 keeps twice 112 (x 2 = 224 < 384).
    quarter = decoder.decode_pixels(0, data, lambda w, h: (112, 112)).image
    assert isinstance(quarter, Image.Image) and quarter.size == (512, 384)


def test_a_rotated_large_jpeg_is_judged_upright(large_photo: Image.Image) -> None:
    """EXIF orientation 6 (shown turned 90°): the hint gets and the size keeps the shown frame."""
    decoder = ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=40_000_000)
    exif = Image.Exif()
    exif[0x0112] = 6
    asked: list[tuple[int, int]] = []

    def portrait_model(width: int, height: int) -> tuple[int, int]:
        asked.append((width, height))
        return 192, 256  # the model's input, upright as well

    shrunk = decoder.decode_pixels(0, jpeg_bytes(large_photo, exif=exif), portrait_model).image
    assert isinstance(shrunk, Image.Image)
    assert asked == [(1536, 2048)]
    # 1/4 scale: 384x512 shown, exactly twice the model input on both sides.
    assert shrunk.size == (384, 512) and source_size(shrunk) == (1536, 2048)


@pytest.mark.parametrize("case", ["png", "small", "all pixels", "setting off"])
def test_what_decodes_every_pixel(large_photo: Image.Image, case: str) -> None:
    decoder = ImageDecoder(
        UrlFetcher(UrlPolicy()), max_pixels=40_000_000, shrink_on_load=case != "setting off"
    )
    photo = large_photo.resize((800, 600)) if case == "small" else large_photo
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG" if case == "png" else "JPEG")
    hint = (lambda w, h: None) if case == "all pixels" else model_224
    decoded = decoder.decode_pixels(0, buffer.getvalue(), hint).image
    assert isinstance(decoded, Image.Image)
    assert decoded.size == photo.size and SOURCE_SIZE not in decoded.info


async def test_deferred_items_pass_the_hint_to_the_decoder(large_photo: Image.Image) -> None:
    decoder = ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=40_000_000)
    (deferred,) = await decoder.defer_all([base64.b64encode(jpeg_bytes(large_photo)).decode()])
    assert isinstance(deferred, DeferredImage)
    image = deferred.load(model_224)
    assert image.size == (1024, 768) and source_size(image) == (2048, 1536)


def test_an_eager_decode_reaches_the_pool_as_a_deferred_one_would(
    large_photo: Image.Image,
) -> None:
    """A job or a request that loaded its model decoded eagerly: the pool still gets the same
    pixels as a deferred decode (the large JPEG again at reduced scale, anything else as is)."""
    decoder = ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=40_000_000)
    data = jpeg_bytes(large_photo)
    eager = decoder.decode_pixels(0, data)
    again = decoder.for_pool(0, eager)
    assert isinstance(again, DeferredImage)
    shrunk = again.load(model_224)
    expected = decoder.decode_pixels(0, data, model_224).image
    assert shrunk.size == (1024, 768) and source_size(shrunk) == (2048, 1536)
    assert np.array_equal(np.asarray(shrunk), np.asarray(expected))
    small = decoder.decode_pixels(0, jpeg_bytes(large_photo.resize((800, 600))))
    for decoded in (small, eager):  # nothing to shrink: the eager pixels themselves
        kept = decoder.for_pool(0, decoded)
        assert isinstance(kept, DeferredImage)
        hint = model_224 if decoded is small else (lambda w, h: None)
        assert kept.load(hint) is decoded.image
    off = ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=40_000_000, shrink_on_load=False)
    assert off.for_pool(0, eager) is eager.image
    png = decoder.decode_pixels(0, base64.b64decode(encode(large_photo)))
    assert decoder.for_pool(0, png) is png.image  # no JPEG, nothing to decode again


@pytest.mark.parametrize("kind", ["progressive", "CMYK", "grey", "MPO"])
def test_every_kind_of_jpeg_decodes_small(large_photo: Image.Image, kind: str) -> None:
    """Progressive, CMYK and greyscale JPEGs, and a camera's MPO (a JPEG with more frames)."""
    buffer = io.BytesIO()
    if kind == "MPO":
        large_photo.save(buffer, "MPO", save_all=True, append_images=[large_photo.rotate(90)])
    elif kind == "progressive":
        large_photo.save(buffer, "JPEG", progressive=True)
    else:
        large_photo.convert("CMYK" if kind == "CMYK" else "L").save(buffer, "JPEG")
    decoder = ImageDecoder(UrlFetcher(UrlPolicy()), max_pixels=40_000_000)
    shrunk = decoder.decode_pixels(0, buffer.getvalue(), model_224).image
    assert isinstance(shrunk, Image.Image) and shrunk.mode == "RGB"
    assert shrunk.size == (1024, 768) and source_size(shrunk) == (2048, 1536)
