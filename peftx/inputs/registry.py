"""The input-adapter registry: name -> recipe config class (whose `build()` makes the module)."""

from peftx.inputs.base import InputConfig
from peftx.registry import Registry

INPUTS: Registry[type[InputConfig]] = Registry("input adapter", "peftx.inputs")
