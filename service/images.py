"""Image inputs: base64, data URIs and URLs into validated RGB images; image ids into handles.

Each decoded image keeps its original bytes, so the job queue can carry validated bytes
instead of pixels. An ``{"image_id"}`` item (SAM3's cached embeddings) becomes an
:class:`~engines.base.ImageHandle` that the family resolves; on the queue it travels as
:data:`IMAGE_ID_PREFIX` + the id in place of image bytes, and the worker looks the id up in its
own pool's cache (see the README: with Redis workers in other processes the id must have been
embedded by that process).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engines.base import DeferredImage, ImageHandle, SizeHint
from engines.batching import gather_list
from engines.errors import InvalidInputError, PayloadTooLargeError
from engines.images import SOURCE_SIZE, shrink_on_load
from service.schemas.common import ImageInput, ImageRef
from service.urlfetch import UrlFetcher

DATA_URI = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?P<params>(;[\w=.-]+)*?);base64,", re.I)
URL_PREFIX = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)
# What an image_id item's "bytes" start with on the job queue. No image format begins with a
# NUL and this text, and client bytes are never read as an id (only queue bytes are).
IMAGE_ID_PREFIX = b"\0vision-api:image-id:"
# The formats the API documents, and only these reach a decoder: EPS and PDF would hand the
# bytes to Ghostscript where it is installed, SVG is not a raster, and the dozens of other
# formats Pillow reads are attack surface nobody asked for. (JPEG includes the multi-picture
# JPEGs of phone cameras: Pillow's JPEG opener hands them to its MPO reader.)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# Every JPEG (and MPO) starts with this marker.
JPEG_START = b"\xff\xd8"


@dataclass(frozen=True)
class DecodedImage:
    """A validated RGB image with the bytes it came from, or a handle to a cached one."""

    image: Image.Image | ImageHandle
    data: bytes

    @classmethod
    def of_id(cls, image_id: str) -> DecodedImage:
        """An ``image_id`` item: its handle, and the id as the queue carries it."""
        return cls(ImageHandle(image_id), IMAGE_ID_PREFIX + image_id.encode())

    @property
    def width(self) -> int | None:
        """Width after EXIF rotation (None for a handle)."""
        return self.image.width if isinstance(self.image, Image.Image) else None

    @property
    def height(self) -> int | None:
        """Height after EXIF rotation (None for a handle)."""
        return self.image.height if isinstance(self.image, Image.Image) else None


class ImageDecoder:
    """Turns request image items into :class:`DecodedImage` s.

    Args:
        fetcher: Fetches URL items under the URL policy.
        max_pixels: Largest width × height accepted (413 beyond).
        shrink_on_load: Decode a large JPEG at a reduced scale where the pipeline says how
            small it will resize it (:func:`engines.images.shrink_on_load`).
    """

    def __init__(
        self, fetcher: UrlFetcher, max_pixels: int, *, shrink_on_load: bool = True
    ) -> None:
        self.fetcher = fetcher
        self.max_pixels = max_pixels
        self.shrink_on_load = shrink_on_load

    async def decode_all(self, items: Sequence[ImageInput]) -> list[DecodedImage]:
        """Fetch and decode every item concurrently; results in input order."""
        return await gather_list([self._decode(i, item) for i, item in enumerate(items)])

    async def defer_all(self, items: Sequence[ImageInput]) -> list[DeferredImage | ImageHandle]:
        """Every item ready to be decoded by whichever thread pre-processes it.

        URLs are fetched now (concurrently), the items' shapes checked now; the bytes are
        decoded when the pool loads each :class:`~engines.base.DeferredImage`, with the same
        checks and errors as :meth:`decode_all`. Image ids become handles.
        """
        return await gather_list([self._defer(i, item) for i, item in enumerate(items)])

    async def _defer(self, index: int, item: ImageInput) -> DeferredImage | ImageHandle:
        if isinstance(item, ImageRef) and item.image_id is not None:
            decoded = await self._decode(index, item)  # checks, no decoding
            assert isinstance(decoded.image, ImageHandle)
            return decoded.image
        url, text = self._source(index, item)
        if url is not None:
            data = await self._fetch(index, url)
            return DeferredImage(functools.partial(self._pixels, index, data))
        return DeferredImage(functools.partial(self._base64_pixels, index, text))

    def _pixels(
        self,
        index: int,
        data: bytes,
        hint: SizeHint | None,
        decoded: Image.Image | None = None,
    ) -> Image.Image:
        image = self.decode_pixels(index, data, hint, decoded).image
        assert isinstance(image, Image.Image)
        return image

    def _base64_pixels(self, index: int, text: str, hint: SizeHint | None) -> Image.Image:
        return self._pixels(index, _b64decode(index, text), hint)

    @staticmethod
    def _source(index: int, item: ImageInput) -> tuple[str | None, str]:
        """``(url, "")`` or ``(None, base64 text)`` of one item."""
        if isinstance(item, ImageRef):
            if (item.data is None) == (item.url is None):
                fields = (
                    "'data', 'url' and 'image_id'" if item.accepts_image_id else "'data' and 'url'"
                )
                raise InvalidInputError(f"images[{index}]: give exactly one of {fields}.")
            return (item.url, "") if item.url is not None else (None, item.data or "")
        return (item, "") if URL_PREFIX.match(item) else (None, item)

    async def _fetch(self, index: int, url: str) -> bytes:
        try:
            return await self.fetcher.fetch(url)
        except (InvalidInputError, PayloadTooLargeError) as exc:
            raise type(exc)(f"images[{index}]: {exc.detail}") from None

    async def _decode(self, index: int, item: ImageInput) -> DecodedImage:
        if isinstance(item, ImageRef) and item.image_id is not None:
            if item.data is not None or item.url is not None:
                raise InvalidInputError(
                    f"images[{index}]: give exactly one of 'data', 'url' and 'image_id'."
                )
            return DecodedImage.of_id(item.image_id)
        url, text = self._source(index, item)
        if url is not None:
            data = await self._fetch(index, url)
            return await asyncio.to_thread(self.decode_pixels, index, data)
        # base64 too off the event loop (0.2 ms for a 100 kB photo), in the same thread hop.
        return await asyncio.to_thread(self.decode_base64, index, text)

    def decode_base64(self, index: int, text: str) -> DecodedImage:
        """A base64 (or data URI) item's pixels."""
        return self.decode_pixels(index, _b64decode(index, text))

    def for_pool(
        self, index: int, decoded: DecodedImage
    ) -> Image.Image | ImageHandle | DeferredImage:
        """An eagerly decoded image as the pool should get it: as a deferred one would decode.

        A large JPEG is decoded again at the scale the loaded pipeline asks for, so a request
        that found its model unloaded, or a job, gets the answer a request to the loaded model
        gets; any other JPEG is the one already decoded (its header read again, no pixels),
        any other format passes as it is.
        """
        image = decoded.image
        if (
            isinstance(image, ImageHandle)
            or not self.shrink_on_load
            or not decoded.data.startswith(JPEG_START)
        ):
            return image
        return DeferredImage(functools.partial(self._pixels, index, decoded.data, decoded=image))

    def decode_bytes(self, index: int, data: bytes) -> DecodedImage:
        """What the job queue carried: an image id reference, or image bytes to decode."""
        if data.startswith(IMAGE_ID_PREFIX):
            return DecodedImage.of_id(data[len(IMAGE_ID_PREFIX) :].decode())
        return self.decode_pixels(index, data)

    def decode_pixels(
        self,
        index: int,
        data: bytes,
        hint: SizeHint | None = None,
        decoded: Image.Image | None = None,
    ) -> DecodedImage:
        """Decode, check the pixel limit, apply EXIF orientation, convert to RGB.

        With a ``hint`` (what the pipeline resizes the image to) a large JPEG is decoded at a
        reduced scale, its size as sent kept in ``Image.info`` (``engines.images.source_size``).
        ``decoded``: these bytes decoded in full already, returned where no reduced scale
        applies.
        """
        if not data:
            raise InvalidInputError(f"images[{index}]: the image is empty.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
                pixels = image.width * image.height
                if pixels > self.max_pixels:
                    raise PayloadTooLargeError(
                        f"images[{index}]: {image.width}x{image.height} is {pixels} pixels, "
                        f"over the limit of {self.max_pixels}."
                    )
                source = (
                    shrink_on_load(image, hint)
                    if hint is not None and self.shrink_on_load
                    else None
                )
                if source is None and decoded is not None:
                    return DecodedImage(decoded, data)
                image.load()
                # In place: without it Pillow returns a copy even of an upright image (0.75 ms
                # for a 512² photo, half of the decode).
                ImageOps.exif_transpose(image, in_place=True)
                rgb = _to_rgb(image)
                if source is not None:
                    rgb.info[SOURCE_SIZE] = source
        except Image.DecompressionBombError:
            # Pillow's own ceiling (2 x MAX_IMAGE_PIXELS), checked while opening: far over ours.
            raise PayloadTooLargeError(
                f"images[{index}]: the image declares more pixels than the limit of "
                f"{self.max_pixels} (a decompression bomb?)."
            ) from None
        except ValueError as exc:
            if "too large" in str(exc).lower():  # a PNG text/ICC chunk that inflates too far
                raise PayloadTooLargeError(
                    f"images[{index}]: a compressed part of the image inflates beyond the "
                    "decoder's limit (a decompression bomb?)."
                ) from None
            raise self._undecodable(index, exc) from None
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise self._undecodable(index, exc) from None
        return DecodedImage(rgb, data)

    @staticmethod
    def _undecodable(index: int, exc: Exception) -> InvalidInputError:
        return InvalidInputError(
            f"images[{index}]: not a decodable image ({type(exc).__name__}); "
            "send JPEG, PNG, WebP, BMP, TIFF or GIF bytes."
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white rather than their hidden colour."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode.startswith("I") or image.mode == "F":
        # 16/32-bit grey: scale the full range to 8 bits instead of clipping at 255.
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        image = Image.fromarray(scaled.astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def _b64decode(index: int, text: str) -> bytes:
    match = DATA_URI.match(text)
    if match:
        text = text[match.end() :]
    elif text.startswith("data:"):
        raise InvalidInputError(
            f"images[{index}]: only base64 data URIs are accepted (data:image/...;base64,...)."
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass  # line breaks or spaces (wrapped base64) are allowed: strip them, try again
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"images[{index}]: not valid base64 and not an http(s) URL."
        ) from None
