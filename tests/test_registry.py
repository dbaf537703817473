"""A message class is known to the codec where it is written: no list to edit."""

from __future__ import annotations

import pkgutil
import sys
from typing import ClassVar

import pytest
from attrs import frozen

import protocol.messages
from protocol.codec import decode_body, encode_messages
from protocol.messages.host import CheckHealthCommand
from protocol.model import Command, UnknownMessage, jfield, message_class


@frozen
class RegistryProbeCommand(Command):
    JAVA_CLASS: ClassVar[str] = "test.registry.ProbeCommand"

    size: int = jfield("size", default=0)


def test_a_class_that_declares_its_java_name_decodes_as_itself() -> None:
    assert message_class("test.registry.ProbeCommand") is RegistryProbeCommand
    body = encode_messages([RegistryProbeCommand(size=3)])
    assert decode_body(body, length=len(body), compressed=False) == [RegistryProbeCommand(size=3)]
    # A name nobody declared stays unknown, its fields kept.
    body = b'[{"test.registry.Nobody":{"size":3}}]'
    (unknown,) = decode_body(body, length=len(body), compressed=False)
    assert unknown == UnknownMessage(name="test.registry.Nobody", fields={"size": 3})


def test_two_classes_cannot_claim_one_java_name() -> None:
    with pytest.raises(TypeError, match="both declare JAVA_CLASS"):

        @frozen
        class Impostor(Command):
            JAVA_CLASS: ClassVar[str] = CheckHealthCommand.JAVA_CLASS

    assert message_class(CheckHealthCommand.JAVA_CLASS) is CheckHealthCommand


def test_every_module_of_the_messages_package_is_imported_and_re_exported() -> None:
    rooms = [m.name for m in pkgutil.iter_modules(protocol.messages.__path__)]
    assert {"host", "migration", "certificates"} <= set(rooms)
    for room in rooms:
        module = sys.modules[f"protocol.messages.{room}"]
        for name, value in vars(module).items():
            ours = isinstance(value, type) and value.__module__ == module.__name__
            if ours and not name.startswith("_"):
                assert getattr(protocol.messages, name) is value, name
