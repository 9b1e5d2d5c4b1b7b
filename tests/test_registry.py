"""Plug-ins declare their name once: registries read it from the config class (or a family's
`name`), refuse a malformed, mismatched or duplicate one, list the valid names on a miss, and every
registered plug-in documents each of its recipe fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from peftx.errors import PeftxError
from peftx.inputs import INPUTS
from peftx.methods import METHODS, MethodConfig
from peftx.registry import Registry, declared_name
from peftx.tasks import TASKS

PLUGIN_REGISTRIES = {"method": METHODS, "input": INPUTS, "task": TASKS}


class ToyMethod(MethodConfig):
    name: Literal["toy"] = "toy"


def test_a_config_class_registers_under_its_literal_name():
    reg = Registry("method")
    assert reg.register(ToyMethod) is ToyMethod
    assert reg.names() == ["toy"] and reg.get("toy") is ToyMethod


def test_a_dataclass_registers_under_its_name_and_anything_else_needs_one():
    @dataclass(frozen=True)
    class Thing:
        name: str

    reg = Registry("thing")
    thing = Thing("thing_one")
    reg.register(thing)
    reg.register(len, name="length")
    assert reg.get("thing_one") is thing and reg.get("length") is len
    with pytest.raises(ValueError, match="declares no name: pass name="):
        reg.register(print)


def test_a_given_name_must_match_the_declared_one():
    with pytest.raises(ValueError, match="method registered as 'lora' declares the name 'toy'"):
        Registry("method").register(ToyMethod, name="lora")


class NoLiteral(MethodConfig):
    pass  # inherits `name: str`


class TwoNames(MethodConfig):
    name: Literal["one", "two"] = "one"


class WrongDefault(MethodConfig):
    name: Literal["toy"] = "tyo"


class NoDefault(MethodConfig):
    name: Literal["toy"]


class Capitals(MethodConfig):
    name: Literal["Toy"] = "Toy"


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (NoLiteral, r'NoLiteral must declare its name once: `name: Literal\["..."\] = "..."`'),
        (TwoNames, r'TwoNames must declare its name once: `name: Literal\["..."\] = "..."`'),
        (WrongDefault, r"WrongDefault.name must default to its Literal value 'toy'"),
        (NoDefault, r"NoDefault.name must default to its Literal value 'toy'"),
        (Capitals, r"method name 'Toy' must be lowercase letters, digits and '_'"),
    ],
)
def test_a_malformed_name_is_refused(cls, message):
    with pytest.raises(ValueError, match=message):
        Registry("method").register(cls)


def test_a_duplicate_name_raises_and_an_unknown_one_lists_the_valid_ones():
    reg = Registry("method")
    reg.register(ToyMethod)

    class Again(MethodConfig):
        name: Literal["toy"] = "toy"

    with pytest.raises(ValueError, match="method 'toy' is already registered"):
        reg.register(Again)
    with pytest.raises(ValueError, match="method 'lora' is already registered"):
        METHODS.register(METHODS.get("lora"))
    with pytest.raises(PeftxError, match=r"unknown method 'tyo' \(valid: toy\)"):
        reg.get("tyo")


@pytest.mark.parametrize("kind", PLUGIN_REGISTRIES)
def test_every_plugin_is_registered_under_the_name_it_declares(kind):
    reg = PLUGIN_REGISTRIES[kind]
    assert reg.names()
    assert all(declared_name(reg.get(n)) == n for n in reg.names())


@pytest.mark.parametrize("kind", PLUGIN_REGISTRIES)
def test_every_plugin_field_has_help_text(kind):
    """What `peftx recipe show` prints: each field's attribute docstring. `name` picks the plug-in,
    so its help is the class docstring."""
    reg = PLUGIN_REGISTRIES[kind]
    undocumented = []
    for plugin in reg.names():
        cls = reg.get(plugin)
        if not (cls.__doc__ or "").strip():
            undocumented.append(f"{kind} {plugin}: class docstring")
        for field, info in cls.model_fields.items():
            if field != "name" and not (info.description or "").strip():
                undocumented.append(f"{kind}.{field} of {plugin}")
    assert undocumented == []
