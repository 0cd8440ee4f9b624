"""What run.log and engine.init accept, without a database."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from engine.sdk.artifacts import check_alias, default_digest
from engine.sdk.copy_binary import Float8Array, Int8Array, TimestamptzArray
from engine.sdk.validate import (
    check_key,
    check_name,
    check_step,
    check_time,
    parse_project,
    to_float,
)


class FakeScalarTensor:
    """Stands in for a torch tensor (torch is not a dependency): a value whose `__float__`
    converts a one-element tensor and raises for any other, as torch's does."""

    def __init__(self, value):
        self.value = value

    def __float__(self) -> float:
        if isinstance(self.value, Exception):
            raise self.value
        return float(self.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, 0.5),
        (3, 3.0),
        (True, 1.0),
        (False, 0.0),
        (np.float32(0.25), 0.25),
        (np.float64(-2.5), -2.5),
        (np.int64(7), 7.0),
        (np.uint8(255), 255.0),
        (np.bool_(True), 1.0),
        (np.bool_(False), 0.0),
        (Fraction(1, 4), 0.25),
        (Decimal("0.1"), 0.1),
        (np.array(0.75), 0.75),  # a 0-d array
        (np.array(3, dtype=np.int32), 3.0),
        (FakeScalarTensor(0.125), 0.125),
        ("0.5", 0.5),  # float() converts numeric text, so it is a number
        (" 1e-3 ", 0.001),
    ],
)
def test_anything_float_converts_is_a_number(value, expected):
    result = to_float("acc", value)
    assert type(result) is float and result == expected


def test_nan_and_infinities_are_values():
    assert to_float("x", float("inf")) == float("inf")
    assert to_float("x", np.float64("-inf")) == float("-inf")
    assert to_float("x", float("nan")) != to_float("x", float("nan"))  # NaN stays NaN


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("warmup", "float\\(\\) cannot convert it: could not convert string to float"),
        (None, "float\\(\\) cannot convert it"),
        ([1.0], "float\\(\\) cannot convert it"),
        ({"a": 1}, "float\\(\\) cannot convert it"),
        (1 + 2j, "float\\(\\) cannot convert it"),
        (Decimal("sNaN"), "float\\(\\) cannot convert it"),
        (np.array([1.0]), "shape \\(1,\\) is not a single number"),
        (np.zeros((1000, 1000)), "shape \\(1000, 1000\\) is not a single number"),
        (
            FakeScalarTensor(RuntimeError("a tensor with 2 elements cannot be converted to Scalar")),
            "2 elements",
        ),
        (object(), "float\\(\\) cannot convert it"),
    ],
)
def test_non_numbers_are_refused_naming_the_key_and_why(value, reason):
    with pytest.raises(TypeError, match=f"'train/acc'.*not a number.*{reason}") as refused:
        to_float("train/acc", value)
    assert len(str(refused.value)) < 300  # a huge value is not copied into the message


def test_int_too_large_for_a_double():
    with pytest.raises(ValueError, match="'big'"):
        to_float("big", 10**400)


@pytest.mark.parametrize("key", ["loss", "train/acc", "a" * 256, "ünïcode key", "system", "systems/x"])
def test_valid_keys(key):
    assert check_key(key) == key


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        ("", ValueError, "1-256"),
        ("a" * 257, ValueError, "1-256"),
        ("bad\nkey", ValueError, "control"),
        ("tab\tkey", ValueError, "control"),
        ("nul\x00", ValueError, "control"),
        ("system/cpu", ValueError, "reserved"),
        ("system.cpu", ValueError, "reserved"),
        (3, TypeError, "string"),
    ],
)
def test_invalid_keys(key, error, message):
    with pytest.raises(error, match=message):
        check_key(key)


def test_the_sampler_may_use_system_keys():
    assert check_key("system/cpu", system=True) == "system/cpu"


@pytest.mark.parametrize("project", ["acme/vision", "a/b", "A-1_x.y/p.2", f"{'e' * 128}/{'p' * 128}"])
def test_valid_projects(project):
    entity, name = parse_project(project)
    assert f"{entity}/{name}" == project


@pytest.mark.parametrize(
    "project", ["acme", "acme/", "/vision", "a/b/c", "acme/vi sion", f"{'e' * 129}/p", "acme/vïsion"]
)
def test_invalid_projects(project):
    with pytest.raises(ValueError, match="entity/project"):
        parse_project(project)


def test_time_must_be_timezone_aware():
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    assert check_time(aware) is aware
    assert check_time(datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))).utcoffset() == timedelta(
        hours=2
    )
    with pytest.raises(ValueError, match="naive"):
        check_time(datetime(2026, 1, 1))
    with pytest.raises(TypeError):
        check_time("2026-01-01T00:00:00Z")


def test_steps():
    assert check_step(0) == 0
    assert check_step(np.int64(12)) == 12
    with pytest.raises(ValueError, match=">= 0"):
        check_step(-1)
    for bad in (1.0, True, "3", None):
        with pytest.raises(TypeError):
            check_step(bad)


def test_names_and_aliases():
    assert check_name("registry name", "model", pattern=True) == "model"
    with pytest.raises(ValueError):
        check_name("registry name", "my model", pattern=True)
    with pytest.raises(ValueError):
        check_name("tag", "")
    assert check_alias("production") == "production"
    with pytest.raises(ValueError, match="version index"):
        check_alias("v3")


def test_default_digest_depends_on_metadata_and_index():
    assert default_digest({"b": 1, "a": 2}, 0) == default_digest({"a": 2, "b": 1}, 0)
    assert default_digest({"a": 1}, 0) != default_digest({"a": 1}, 1)
    assert default_digest({"a": 1}, 0) != default_digest({"a": 2}, 0)


def _decode_array(data: bytes, code: str) -> tuple[int, list]:
    ndim, has_null, oid, length, lower = struct.unpack_from(">iiiii", data)
    assert (ndim, has_null, lower) == (1, 0, 1)
    body = struct.unpack_from(">" + ("i" + code) * length, data, 20)
    assert set(body[0::2]) <= {8}
    return oid, list(body[1::2])


def test_series_tails_are_packed_as_binary_arrays():
    assert _decode_array(Int8Array.of([0, 5, 2**40]), "q") == (20, [0, 5, 2**40])
    assert _decode_array(Float8Array.of([0.5, -1e300]), "d") == (701, [0.5, -1e300])
    t = datetime(2000, 1, 1, 0, 0, 1, 5, tzinfo=UTC)
    assert _decode_array(TimestamptzArray.of([t]), "q") == (1184, [1_000_005])
    assert _decode_array(Int8Array.of([]), "q") == (20, [])


def test_long_tails_are_packed_element_by_element_in_order():
    steps = [(-1) ** i * i * 2**33 + i for i in range(1, 301)]
    values = [i / 7 if i % 50 else math.inf for i in range(300)]
    assert _decode_array(Int8Array.of(steps), "q") == (20, steps)
    assert _decode_array(Float8Array.of(values), "d") == (701, values)
    (_, decoded) = _decode_array(Float8Array.of([math.nan, -0.0]), "d")
    assert math.isnan(decoded[0]) and math.copysign(1.0, decoded[1]) == -1.0
