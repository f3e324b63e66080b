"""Built-in serdes: Java byte compatibility, errors that name the serde, HTTP text keys."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onceflow.errors import ConfigurationError, SerdeError
from onceflow.serdes import (
    BytesSerde,
    Float64Serde,
    Int64Serde,
    JsonSerde,
    Serde,
    StrSerde,
    TextSerde,
    parse_text_key,
    render_value,
    resolve_serde,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
JSON_SCALARS = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


class UpperSerde:  # a custom serde as a user writes one: no from_text/to_jsonable
    name = "upper"

    def serialize(self, value: str) -> bytes:
        return value.upper().encode()

    def deserialize(self, data: bytes) -> str:
        return data.decode().upper()


class PointSerde:  # a custom serde whose values orjson cannot encode
    name = "point"

    def serialize(self, value: complex) -> bytes:
        return struct.pack(">dd", value.real, value.imag)

    def deserialize(self, data: bytes) -> complex:
        real, imag = struct.unpack(">dd", data)
        return complex(real, imag)


# --- Java compatibility -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serde", "value", "wire_hex"),
    [
        ("int64", 0, "0000000000000000"),
        ("int64", 1, "0000000000000001"),
        ("int64", -1, "ffffffffffffffff"),
        ("int64", 256, "0000000000000100"),
        ("int64", 2**63 - 1, "7fffffffffffffff"),
        ("int64", -(2**63), "8000000000000000"),
        ("float64", 1.0, "3ff0000000000000"),
        ("float64", -2.5, "c004000000000000"),
        ("float64", -0.0, "8000000000000000"),
        ("float64", math.inf, "7ff0000000000000"),
        ("float64", -math.inf, "fff0000000000000"),
        ("str", "héllo", "68c3a96c6c6f"),
        ("json", {"a": [1, None]}, b'{"a":[1,null]}'.hex()),
    ],
)
def test_writes_the_java_serializers_bytes(serde: str, value: Any, wire_hex: str) -> None:
    assert resolve_serde(serde).serialize(value).hex() == wire_hex
    assert resolve_serde(serde).deserialize(bytes.fromhex(wire_hex)) == value


@given(INT64)
def test_int64_is_big_endian_twos_complement(value: int) -> None:
    assert Int64Serde().serialize(value) == value.to_bytes(8, "big", signed=True)


def test_float64_folds_every_nan_into_javas_canonical_nan() -> None:
    odd_nan = struct.unpack(">d", bytes.fromhex("7ff0000000000001"))[0]
    assert math.isnan(odd_nan)
    assert Float64Serde().serialize(odd_nan).hex() == "7ff8000000000000"
    assert Float64Serde().serialize(math.nan).hex() == "7ff8000000000000"


@pytest.mark.parametrize(
    ("serde", "values"),
    [
        ("bytes", st.binary()),
        ("str", st.text()),
        ("json", JSON_VALUES),
        ("int64", INT64),
        ("float64", st.floats()),
    ],
)
@given(data=st.data())
def test_round_trips(serde: str, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    codec, value = resolve_serde(serde), data.draw(values)
    wire = codec.serialize(value)
    assert codec.serialize(codec.deserialize(wire)) == wire  # bytes, as NaN != NaN
    if serde != "float64":
        assert codec.deserialize(wire) == value


def test_json_sort_keys_gives_equal_dicts_equal_bytes() -> None:
    a, b = {"x": 1, "y": 2}, {"y": 2, "x": 1}
    assert JsonSerde().serialize(a) != JsonSerde().serialize(b)
    assert JsonSerde(sort_keys=True).serialize(a) == JsonSerde(sort_keys=True).serialize(b)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serde", "call", "arg", "message"),
    [
        ("int64", "deserialize", b"\x00\x01\x02", "int64 serde expects 8 bytes, got 3"),
        ("int64", "deserialize", b"\x00" * 9, "int64 serde expects 8 bytes, got 9"),
        ("int64", "serialize", 2**63, "int64 serde expects an int64, got int 92233720368547758"),
        ("int64", "serialize", -(2**63) - 1, "int64 serde expects an int64, got int"),
        ("int64", "serialize", 1.5, "int64 serde expects an int64, got float 1.5"),
        ("int64", "serialize", "7", "int64 serde expects an int64, got str '7'"),
        ("float64", "deserialize", b"", "float64 serde expects 8 bytes, got 0"),
        ("float64", "serialize", "1.5", "float64 serde expects a float, got str"),
        ("float64", "serialize", 10**400, "float64 serde expects a float, got int"),
        (
            "str",
            "deserialize",
            b"ok\xff\xfe",
            "str serde expects UTF-8, got b'\\xff\\xfe' at byte 2",
        ),
        ("str", "serialize", 42, "str serde expects str, got int"),
        ("str", "serialize", "\ud800", "str serde cannot encode '\\ud800'"),
        ("bytes", "serialize", "text", "bytes serde expects bytes, got str"),
        ("json", "deserialize", b"{not json", "json serde got invalid JSON"),
        ("json", "serialize", object(), "json serde cannot encode object"),
        ("json", "serialize", {1: "non-str key"}, "json serde cannot encode dict"),
    ],
)
def test_errors_are_serde_errors_that_name_the_serde(
    serde: str, call: str, arg: Any, message: str
) -> None:
    with pytest.raises(SerdeError) as caught:
        getattr(resolve_serde(serde), call)(arg)
    assert str(caught.value).startswith(message)


# --- resolve_serde ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BytesSerde, StrSerde, JsonSerde, Int64Serde, Float64Serde])
def test_resolve_serde_by_name(cls: type[Serde[Any]]) -> None:
    serde = resolve_serde(cls.name)
    assert type(serde) is cls
    assert isinstance(serde, TextSerde)


def test_resolve_serde_names_the_unknown_value_and_the_accepted_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_serde("strng")
    assert str(caught.value) == (
        "unknown serde 'strng' (did you mean 'str'?): accepted names are "
        "'bytes', 'float64', 'int64', 'json', 'str'"
    )


def test_resolve_serde_passes_a_serde_object_through() -> None:
    custom = UpperSerde()
    assert resolve_serde(custom) is custom
    assert isinstance(custom, Serde)


def test_resolve_serde_rejects_a_class_with_the_fix() -> None:
    with pytest.raises(ConfigurationError, match=r"UpperSerde is a class; pass UpperSerde\(\)"):
        resolve_serde(UpperSerde)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [42, None, object(), b"str"])
def test_resolve_serde_rejects_what_is_not_a_serde(spec: Any) -> None:
    with pytest.raises(ConfigurationError, match="serde must be one of 'bytes', 'float64'"):
        resolve_serde(spec)


def test_resolve_serde_rejects_a_serde_without_a_string_name() -> None:
    custom = UpperSerde()
    custom.name = 3  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="got UpperSerde"):
        resolve_serde(custom)


# --- text keys and JSON rendering for the HTTP API --------------------------------------------


@pytest.mark.parametrize(
    ("serde", "text", "key"),
    [
        ("str", "alice", "alice"),
        ("str", "", ""),
        ("int64", "42", 42),
        ("int64", "-7", -7),
        ("int64", "9223372036854775807", 2**63 - 1),
        ("int64", "-9223372036854775808", -(2**63)),
        ("float64", "1.5", 1.5),
        ("float64", "Infinity", math.inf),
        ("json", "42", 42),
        ("json", '"42"', "42"),
        ("json", "alice", "alice"),
        ("json", '{"user": 7}', {"user": 7}),
        ("bytes", "héllo", b"h\xc3\xa9llo"),
    ],
)
def test_parse_text_key(serde: str, text: str, key: Any) -> None:
    assert parse_text_key(resolve_serde(serde), text) == key


@pytest.mark.parametrize(
    ("serde", "text", "message"),
    [
        ("int64", "abc", "int64 serde expects a decimal int64 such as 42, got 'abc'"),
        ("int64", "1_000", "int64 serde expects a decimal int64"),
        ("int64", " 7", "int64 serde expects a decimal int64"),
        ("int64", "\u0667", "int64 serde expects a decimal int64"),  # Arabic-Indic seven
        ("int64", "9223372036854775808", "int64 serde expects a decimal int64"),
        ("int64", "9" * 5000, "int64 serde expects a decimal int64"),
        ("float64", "one", "float64 serde expects a number such as 1.5, got 'one'"),
    ],
)
def test_parse_text_key_rejects_bad_text_with_a_serde_error(
    serde: str, text: str, message: str
) -> None:
    with pytest.raises(SerdeError) as caught:
        parse_text_key(resolve_serde(serde), text)
    assert str(caught.value).startswith(message)


def test_parse_text_key_of_a_custom_serde_reads_the_text_as_wire_bytes() -> None:
    assert parse_text_key(UpperSerde(), "bob") == "BOB"


@pytest.mark.parametrize(
    ("serde", "value", "rendered"),
    [
        ("str", "alice", "alice"),
        ("int64", 2**63 - 1, 2**63 - 1),
        ("float64", 1.5, 1.5),
        ("float64", math.nan, "NaN"),
        ("float64", math.inf, "Infinity"),
        ("float64", -math.inf, "-Infinity"),
        ("json", {"a": [1, None]}, {"a": [1, None]}),
        ("bytes", b"h\xc3\xa9llo", "héllo"),
        ("bytes", b"\xff\x00", {"base64": "/wA="}),
    ],
)
def test_render_value(serde: str, value: Any, rendered: Any) -> None:
    assert render_value(resolve_serde(serde), value) == rendered


def test_render_value_of_a_custom_serde() -> None:
    assert render_value(UpperSerde(), "BOB") == "BOB"
    wire = PointSerde().serialize(1 + 2j)
    assert render_value(PointSerde(), 1 + 2j) == {"base64": base64.b64encode(wire).decode()}


@given(st.binary())
def test_rendered_bytes_are_json_and_give_the_bytes_back(value: bytes) -> None:
    rendered = render_value(BytesSerde(), value)
    orjson.dumps(rendered)
    if isinstance(rendered, str):
        assert rendered.encode() == value
    else:
        assert base64.b64decode(rendered["base64"]) == value


@pytest.mark.parametrize(
    ("serde", "keys"), [("str", st.text()), ("int64", INT64), ("float64", st.floats())]
)
@given(data=st.data())
def test_a_key_rendered_then_typed_back_is_the_same_key(
    serde: str, keys: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    codec, key = resolve_serde(serde), data.draw(keys)
    back = parse_text_key(codec, str(render_value(codec, key)))
    assert codec.serialize(back) == codec.serialize(key)


@given(JSON_VALUES)
def test_a_json_key_rendered_then_typed_back_as_json_text_is_the_same_key(key: Any) -> None:
    serde = JsonSerde()
    assert parse_text_key(serde, orjson.dumps(render_value(serde, key)).decode()) == key
