"""Domain errors shared by the engines and the service.

The service maps each class to one HTTP status in ``service/errors.py``; nothing here knows
HTTP. Messages are written for the API's user: what went wrong and what to do.
"""

from __future__ import annotations


class VisionError(Exception):
    """Base class of every error the API reports on purpose."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInputError(VisionError):
    """The request is well-formed JSON but its content cannot be used (400)."""


class NotFoundError(VisionError):
    """An unknown model type, variant, artifact or job (404)."""


class ModelNotLoadedError(VisionError):
    """Lazy loading is off and the model is not loaded (409)."""


class PayloadTooLargeError(VisionError):
    """Too many images, too many pixels or too many bytes (413)."""


class InferenceError(VisionError):
    """Inference failed for a reason that is the server's (500)."""


class UnavailableError(VisionError):
    """Not ready now; may succeed later (503). ``retry_after_s`` goes into ``Retry-After``."""

    def __init__(self, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s
