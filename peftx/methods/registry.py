"""The method registry: name -> recipe config class."""

from peftx.methods.base import MethodConfig
from peftx.registry import Registry

METHODS: Registry[type[MethodConfig]] = Registry("method", "peftx.methods")
