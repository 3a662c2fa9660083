"""HTTP service of the Vision Models API (Litestar + msgspec)."""

__version__ = "0.1.0"
