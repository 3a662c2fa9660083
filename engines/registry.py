"""The registry of model families, and the variants each one serves."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from engines.base import Family, VariantSpec
from engines.errors import NotFoundError


@dataclass
class VariantTable:
    """The variants of one model type as configured: built-in ones plus the config file's."""

    default_variant: str
    variants: dict[str, VariantSpec] = field(default_factory=dict)


class FamilyRegistry:
    """Model families by name and alias; registering a taken name is an error, not an override."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._aliases: dict[str, str] = {}

    def register(self, family: Family) -> None:
        """Add ``family`` under its name and aliases.

        Raises:
            ValueError: The name or one of the aliases is already taken.
        """
        for key in (family.name, *family.aliases):
            if key in self._aliases:
                raise ValueError(f"Model type name {key!r} is already registered")
        self._families[family.name] = family
        for key in (family.name, *family.aliases):
            self._aliases[key] = family.name

    def canonical(self, model_type: str) -> str:
        """The canonical name of ``model_type`` (``grounding_dino`` → ``grounding-dino``).

        Raises:
            NotFoundError: No family has that name or alias.
        """
        try:
            return self._aliases[model_type]
        except KeyError:
            raise NotFoundError(
                f"Unknown model type {model_type!r}; available: {', '.join(self._families)}."
            ) from None

    def get(self, model_type: str) -> Family:
        """The family for a name or alias (see :meth:`canonical`)."""
        return self._families[self.canonical(model_type)]

    def __iter__(self) -> Iterator[Family]:
        return iter(self._families.values())

    def names(self) -> list[str]:
        """Canonical model type names in registration order."""
        return list(self._families)

    def variant_tables(
        self, overrides: Mapping[str, VariantTable] | None = None
    ) -> dict[str, VariantTable]:
        """Built-in variants of every family, merged with configured ones.

        A configured variant with a built-in name replaces its source (and licence if given);
        new names are added. ``overrides`` keys may be aliases.
        """
        tables = {
            f.name: VariantTable(f.default_variant, dict(f.variants))
            for f in self._families.values()
        }
        for model_type, table in (overrides or {}).items():
            name = self.canonical(model_type)
            tables[name].variants.update(table.variants)
            if table.default_variant:
                tables[name].default_variant = table.default_variant
        for name, table in tables.items():
            if table.default_variant not in table.variants:
                raise ValueError(
                    f"Default variant {table.default_variant!r} of {name} is not a known variant"
                )
        return tables


def default_registry() -> FamilyRegistry:
    """A registry holding every family this project implements."""
    from engines.families.depth_anything.family import DepthAnythingFamily
    from engines.families.dinov3.family import Dinov3Family
    from engines.families.grounding_dino.family import GroundingDinoFamily
    from engines.families.sam3.family import Sam3Family

    registry = FamilyRegistry()
    registry.register(Dinov3Family())
    registry.register(GroundingDinoFamily())
    registry.register(Sam3Family())
    registry.register(DepthAnythingFamily())
    return registry
