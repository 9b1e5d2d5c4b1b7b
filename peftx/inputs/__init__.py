"""Input-embedding adapters. Each module registers its recipe config class when imported."""

from peftx.inputs import pretrained_vocab  # noqa: F401  (registration)
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.registry import INPUTS

__all__ = ["INPUTS", "InputConfig", "InputContext"]
