"""Model families. Each module registers one `Family` under its name when imported, without importing
torch or transformers (they are imported when a family builds, loads or pools a model)."""

from peftx.families import bart, bert, gpt2, llama, t5  # noqa: F401  (registration)
from peftx.families.base import CORE_ROLES, OUTER_ROLES, Family, ParamInfo, SpecialIds
from peftx.families.registry import FAMILIES, family_for_model_type

__all__ = ["CORE_ROLES", "FAMILIES", "OUTER_ROLES", "Family", "ParamInfo", "SpecialIds", "family_for_model_type"]
