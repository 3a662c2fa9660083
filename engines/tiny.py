"""``vision-api tiny-models``: tiny random checkpoints of every family, and a config for them."""

from __future__ import annotations

from pathlib import Path

from engines.base import family_tiny_writer
from engines.registry import FamilyRegistry, default_registry


def write_tiny_models(directory: Path, registry: FamilyRegistry | None = None) -> Path:
    """Write each family's tiny checkpoints under ``directory`` and ``directory/config.toml``.

    The config makes the first tiny variant of each family its default, so
    ``vision-api serve --config DIR/config.toml`` serves them without any download.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["# Tiny random checkpoints written by `vision-api tiny-models`: for tests only.", ""]
    for family in registry or default_registry():
        write_tiny = family_tiny_writer(family)
        if write_tiny is None:
            continue
        written = write_tiny(directory)
        lines.append(f"[models.{family.name}]")
        lines.append(f'default_variant = "{next(iter(written))}"')
        for variant, subdir in written.items():
            lines.append(f'[models.{family.name}.variants."{variant}"]')
            lines.append(f'source = "{(directory / subdir).as_posix()}"')
            lines.append('license = "random weights (test checkpoint)"')
        lines.append("")
    config = directory / "config.toml"
    config.write_text("\n".join(lines))
    return config
