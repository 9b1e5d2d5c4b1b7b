"""The family registry, apart from `__init__` so family modules can import it while registering."""

from __future__ import annotations

from peftx.families.base import Family
from peftx.registry import Registry

FAMILIES: Registry[Family] = Registry("model family", "peftx.families")


def family_for_model_type(model_type: str) -> Family | None:
    """The registered family whose architectures include `model_type`, or None."""
    for name in FAMILIES.names():
        fam = FAMILIES.get(name)
        if model_type in fam.model_types:
            return fam
    return None
