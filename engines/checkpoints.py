"""Finding a checkpoint: a local directory as it is, or a Hugging Face repo snapshot."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from engines.errors import NotFoundError, UnavailableError

log = logging.getLogger(__name__)


def resolve_checkpoint(
    source: str, token: str | None = None, allow_patterns: Sequence[str] | None = None
) -> Path:
    """Return a local directory holding ``source``'s files.

    A path that exists is used as it is; anything else is taken as a Hugging Face repo id and
    downloaded (or found in the cache) with ``huggingface_hub``, which honours ``HF_HOME`` and
    ``HF_HUB_OFFLINE``. Gated repos need ``token`` (``HF_TOKEN``).

    Raises:
        NotFoundError: The source is neither a directory nor a repo on the Hub (or a gated one
            without access).
        UnavailableError: The weights are not on this machine and cannot be fetched now
            (offline, no cache): the detail says how to provide them.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source.startswith(("/", ".", "~")):
        raise NotFoundError(f"Checkpoint directory {source!r} does not exist.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return Path(
            snapshot_download(
                source, token=token, allow_patterns=list(allow_patterns) if allow_patterns else None
            )
        )
    except GatedRepoError:
        raise NotFoundError(
            f"{source} is a gated repository: accept its licence on the Hub and set HF_TOKEN."
        ) from None
    except RepositoryNotFoundError:
        raise NotFoundError(f"No checkpoint {source!r} on the Hugging Face Hub.") from None
    except Exception as exc:  # network down, offline mode without a cache...
        log.warning("fetching checkpoint %s failed", source, exc_info=True)
        raise UnavailableError(
            f"The weights of {source!r} are not on this machine and could not be fetched "
            f"({type(exc).__name__}; the server log has why). Download them beforehand "
            "(`huggingface-cli download`, into HF_HOME; HF_TOKEN for gated repos) or point the "
            "variant's source at a local directory in the config file."
        ) from exc


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def weights_mb(path: Path) -> float:
    """Megabytes of weight files under a checkpoint directory (an estimate of its footprint)."""
    total = sum(
        f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES
    )
    return total / 2**20
