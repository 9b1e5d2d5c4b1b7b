"""Input-embedding adapters. Each module registers its recipe config class when imported; third-party
adapters register through the `peftx.inputs` entry point group."""

from peftx.inputs import learned, learned_from_vocab, linear, pixel_vocab, pretrained_vocab  # noqa: F401
from peftx.inputs.base import ExportableInput, ExportedInput, InputConfig, InputContext, exported_input
from peftx.inputs.registry import INPUTS

__all__ = ["INPUTS", "ExportableInput", "ExportedInput", "InputConfig", "InputContext", "exported_input"]
