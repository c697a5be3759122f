"""The exception tree: every class owns its code, the wire round trip keeps the class, and the
validation codes are exactly those the package raises InvalidArgumentError with."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pydantic
import pytest

import jidocoder
from jidocoder import errors, models
from jidocoder.errors import (VALIDATION_CODES, DamagedStoreError, InvalidArgumentError,
                              JidocoderError, StorageError, StoreBusyError, StoreVersionError,
                              from_wire)

PACKAGE = Path(jidocoder.__file__).parent
CLASSES = [getattr(errors, name) for name in errors.__all__
           if isinstance(getattr(errors, name), type)]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_each_class_comes_back_from_the_wire_as_itself(cls):
    error = cls("it went wrong", details={"path": "/x"})
    back = from_wire(error.to_wire())
    assert type(back) is cls and back == error
    assert pickle.loads(pickle.dumps(error)) == error


def test_store_errors_have_their_codes():
    assert [cls.code for cls in (StorageError, StoreBusyError, StoreVersionError,
                                 DamagedStoreError)] == [
        "storage_unavailable", "store_busy", "store_version", "store_damaged"]
    assert jidocoder.StorageError is StorageError


def test_an_unknown_code_is_a_plain_error_not_a_validation_error():
    back = from_wire({"code": "disk_on_fire", "message": "m", "field": None, "details": {}})
    assert type(back) is JidocoderError and back.code == "disk_on_fire"


@pytest.mark.parametrize("code", sorted(VALIDATION_CODES))
def test_every_validation_code_is_an_invalid_argument(code):
    back = from_wire({"code": code, "message": "m", "field": "f"})
    assert type(back) is InvalidArgumentError and back.code == code and back.field == "f"


def explicit_codes() -> set[str]:
    """Every ``code="..."`` given to InvalidArgumentError(...) in the package's sources."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "InvalidArgumentError":
                found.update(kw.value.value for kw in node.keywords
                             if kw.arg == "code" and isinstance(kw.value, ast.Constant))
    return found


def derived_codes() -> set[str]:
    """The ``invalid_<field>`` codes models._translate gives a failing model field."""
    fields = set()
    for value in vars(models).values():
        if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
            fields.update(value.model_fields)
    return {models._FIELD_CODES.get(field, f"invalid_{field}") for field in fields}


def test_validation_codes_cover_every_code_the_package_raises():
    assert explicit_codes() | derived_codes() <= VALIDATION_CODES
    assert not VALIDATION_CODES & {cls.code for cls in CLASSES if cls is not InvalidArgumentError}
