"""Input-embedding adapters. Each module registers its recipe config class when imported; third-party
adapters register through the `peftx.inputs` entry point group. The config modules import no torch (the
layers they build are in `layers`, imported by `build`), so recipes are read without it."""

from peftx.inputs import (  # noqa: F401
    digits,
    learned,
    learned_from_vocab,
    linear,
    patch_linear,
    pixel_vocab,
    pretrained_vocab,
)
from peftx.inputs.base import ExportableInput, ExportedInput, InputConfig, InputContext, exported_input
from peftx.inputs.registry import INPUTS

__all__ = ["INPUTS", "ExportableInput", "ExportedInput", "InputConfig", "InputContext", "exported_input"]
