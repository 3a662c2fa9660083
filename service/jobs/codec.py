"""arq's ``job_serializer`` / ``job_deserializer``: msgspec msgpack, never pickle.

Both sides of the queue (the API's enqueue and the worker) use these. arq also serialises the
outcome of a job with them; failures carry an exception, written here as
``{"exception": <class name>, "message": <str>}``, and results drop the job's arguments, which
would otherwise keep every job's image bytes in Redis for the retention time.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service.arrays import to_builtin


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, BaseException):
        return {"exception": type(obj).__name__, "message": str(obj)}
    try:
        return to_builtin(obj)  # a result's arrays (a depth map, patch features)
    except NotImplementedError:
        raise NotImplementedError(
            f"cannot serialise {type(obj).__name__} onto the job queue"
        ) from None


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder()


def serialize(data: dict[str, Any]) -> bytes:
    """Encode an arq job or result dict with msgpack."""
    if "s" in data and "a" in data:  # a result ("s": success): the arguments are not needed
        data = {**data, "a": ()}
    return _encoder.encode(data)


def deserialize(raw: bytes) -> dict[str, Any]:
    """Decode an arq job or result dict from msgpack."""
    decoded: dict[str, Any] = _decoder.decode(raw)
    return decoded
