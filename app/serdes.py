"""Serdes: how keys and values become bytes on Kafka and back.

A serde is any object with a ``name`` and ``serialize``/``deserialize`` (:class:`Serde`).
Topics and tables name a built-in (``key_serde="str"``) or pass such an object. The built-ins
``bytes``, ``str``, ``json``, ``int64`` and ``float64`` write the same bytes as the Java client's
serializers, so Java and Python services can share topics. Every failure is a :class:`SerdeError`
that names the serde and says what was wrong. Tombstones (``None``) never reach a serde: the caller
handles them, as Java's ``null → null`` rule does.
"""

from __future__ import annotations

import base64
import difflib
import math
import re
import struct
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

import orjson

from onceflow.errors import ConfigurationError, SerdeError

__all__ = [
    "BytesSerde",
    "Float64Serde",
    "Int64Serde",
    "JsonSerde",
    "Serde",
    "StrSerde",
    "TextSerde",
    "parse_text_key",
    "render_value",
    "resolve_serde",
]

T = TypeVar("T")

_INT64 = struct.Struct(">q")
_FLOAT64 = struct.Struct(">d")
# Java's doubleToLongBits folds every NaN into this one pattern: so must we, byte for byte.
_JAVA_NAN = bytes.fromhex("7ff8000000000000")
_JAVA_SPELLING = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # by Python's repr()


@runtime_checkable
class Serde(Protocol[T]):
    """Turns values of type ``T`` into bytes and back.

    ``name`` appears in error messages (``key does not decode with serde 'int64'``). Both methods
    raise :class:`SerdeError` on bad input. They run once per record, so keep them cheap.
    """

    name: str

    def serialize(self, value: T) -> bytes:
        """Return the wire form of ``value``."""

    def deserialize(self, data: bytes) -> T:
        """Return the value whose wire form is ``data``."""


@runtime_checkable
class TextSerde(Serde[T], Protocol[T]):
    """A serde that says how its keys are typed and its values shown over HTTP, as built-ins do."""

    def from_text(self, text: str) -> T:
        """Parse a key typed by a person (a URL path segment); :class:`SerdeError` if invalid."""

    def to_jsonable(self, value: T) -> Any:
        """Return ``value`` as something ``orjson.dumps`` accepts."""


class _Builtin(Generic[T]):
    name: str

    def to_jsonable(self, value: T) -> Any:
        """Return ``value`` as it is: JSON carries it."""
        return value


class _Fixed8(_Builtin[T]):
    _struct: ClassVar[struct.Struct]

    def deserialize(self, data: bytes) -> T:
        """Decode exactly 8 bytes, as the Java deserializer does."""
        try:
            value: T = self._struct.unpack(data)[0]
        except struct.error:
            raise SerdeError(f"{self.name} serde expects 8 bytes, got {len(data)}") from None
        return value


class BytesSerde(_Builtin[bytes]):
    """Passes bytes through unchanged (Java's ``ByteArraySerializer``)."""

    name: str = "bytes"

    def serialize(self, value: bytes) -> bytes:
        """Return ``value`` itself; it must already be bytes."""
        if type(value) is not bytes:
            raise SerdeError(f"bytes serde expects bytes, got {type(value).__name__}")
        return value

    def deserialize(self, data: bytes) -> bytes:
        """Return ``data`` unchanged."""
        return data

    def from_text(self, text: str) -> bytes:
        """Return the UTF-8 bytes of ``text``: the key as it was typed."""
        return text.encode()

    def to_jsonable(self, value: bytes) -> Any:
        """Return ``value`` as a string if it is UTF-8, else as ``{"base64": "..."}``."""
        try:
            return value.decode()
        except UnicodeDecodeError:
            # Tagged rather than a bare base64 string, so that no client mistakes it for the text.
            return {"base64": base64.b64encode(value).decode("ascii")}


class StrSerde(_Builtin[str]):
    """UTF-8 text, byte-compatible with Java's ``StringSerializer``."""

    name: str = "str"

    def serialize(self, value: str) -> bytes:
        """Encode ``value`` as UTF-8."""
        try:
            return value.encode()
        except AttributeError:  # the classic: ctx.send(out, key, n) instead of str(n)
            raise SerdeError(f"str serde expects str, got {type(value).__name__}") from None
        except UnicodeEncodeError as exc:
            raise SerdeError(f"str serde cannot encode {value!r:.40}: {exc.reason}") from None

    def deserialize(self, data: bytes) -> str:
        """Decode ``data`` as UTF-8."""
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            bad = bytes(data[exc.start : exc.start + 4])
            raise SerdeError(f"str serde expects UTF-8, got {bad!r} at byte {exc.start}") from None

    def from_text(self, text: str) -> str:
        """Return ``text`` as it is."""
        return text


class JsonSerde(_Builtin[Any]):
    """JSON via orjson; for JSON *keys*, pass ``sort_keys=True``.

    Partition and store key come from the bytes: equal dicts built in another order must match.
    """

    name: str = "json"

    def __init__(self, *, sort_keys: bool = False) -> None:
        self._option = orjson.OPT_SORT_KEYS if sort_keys else 0

    def serialize(self, value: Any) -> bytes:
        """Encode ``value`` as JSON."""
        try:
            return orjson.dumps(value, option=self._option)
        except orjson.JSONEncodeError as exc:
            raise SerdeError(f"json serde cannot encode {type(value).__name__}: {exc}") from None

    def deserialize(self, data: bytes) -> Any:
        """Decode JSON ``data``."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SerdeError(f"json serde got invalid JSON: {exc}") from None

    def from_text(self, text: str) -> Any:
        """Parse ``text`` as JSON, or else take it as a string: ``alice`` means ``"alice"``."""
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text


class Int64Serde(_Fixed8[int]):
    """8-byte big-endian signed integers, byte-compatible with Java's ``LongSerializer``."""

    name: str = "int64"
    _struct = _INT64

    def serialize(self, value: int) -> bytes:
        """Encode ``value``, an int from -2**63 to 2**63 - 1."""
        try:
            return _INT64.pack(value)
        except struct.error:
            raise SerdeError(f"int64 serde expects an int64, got {_show(value)}") from None

    def from_text(self, text: str) -> int:
        """Parse a decimal integer such as ``42`` or ``-7`` (not int()'s ``1_000`` or `` 7``)."""
        try:
            value = int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None
        except ValueError:  # too many digits for int(): out of range anyway
            value = 2**63
        if value is None or not -(2**63) <= value < 2**63:
            raise SerdeError(f"int64 serde expects a decimal int64 such as 42, got {text!r:.40}")
        return value


class Float64Serde(_Fixed8[float]):
    """8-byte big-endian IEEE 754 doubles, byte-compatible with Java's ``DoubleSerializer``."""

    name: str = "float64"
    _struct = _FLOAT64

    def serialize(self, value: float) -> bytes:
        """Encode ``value`` (an int is converted to float)."""
        if value != value:  # NaN: see _JAVA_NAN
            return _JAVA_NAN
        try:
            return _FLOAT64.pack(value)
        except (struct.error, OverflowError):
            raise SerdeError(f"float64 serde expects a float, got {_show(value)}") from None

    def from_text(self, text: str) -> float:
        """Parse a number such as ``1.5``, ``-2e3``, ``NaN`` or ``Infinity``."""
        try:
            return float(text)
        except ValueError:
            raise SerdeError(f"float64 serde expects a number such as 1.5, got {text!r}") from None

    def to_jsonable(self, value: float) -> Any:
        """Return ``value``; NaN and infinities, which JSON lacks, as Java spells them."""
        return value if math.isfinite(value) else _JAVA_SPELLING[repr(value)]


_BYTES = BytesSerde()
_BUILTINS: dict[str, Serde[Any]] = {
    serde.name: serde for serde in (_BYTES, StrSerde(), JsonSerde(), Int64Serde(), Float64Serde())
}


def resolve_serde(spec: str | Serde[Any]) -> Serde[Any]:
    """Return the built-in serde named ``spec``, or ``spec`` itself if it is a serde object.

    Raises :class:`ConfigurationError` for an unknown name or an object that is not a serde.
    """
    if isinstance(spec, str):
        try:
            return _BUILTINS[spec]
        except KeyError:
            hint = difflib.get_close_matches(spec, _BUILTINS, n=1)
            maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
            msg = f"unknown serde {spec!r}{maybe}: accepted names are {_accepted()}"
            raise ConfigurationError(msg) from None
    if isinstance(spec, type):
        # A class has the protocol's attributes too, but unbound: catch it now, not at a record.
        raise ConfigurationError(f"serde {spec.__name__} is a class; pass {spec.__name__}()")
    if isinstance(spec, Serde) and isinstance(spec.name, str):
        return spec
    raise ConfigurationError(
        f"serde must be one of {_accepted()} or an object with a `name` string and "
        f"serialize()/deserialize() methods, got {_show(spec)}"
    )


def parse_text_key(serde: Serde[T], text: str) -> T:
    """Turn a key typed by a person (``GET /tables/t/keys/{key}``) into a key of ``serde``.

    The text reads as the key would be written in code: ``str`` as it is, ``int64`` a decimal
    integer, ``float64`` a number, ``json`` JSON or else a string (so quote a string that looks
    like a number), ``bytes`` its UTF-8 bytes. A custom :class:`TextSerde` parses it itself; other
    serdes deserialize its UTF-8 bytes. Raises :class:`SerdeError` if it is not a valid key.
    """
    if isinstance(serde, TextSerde):
        key: T = serde.from_text(text)
        return key
    return serde.deserialize(text.encode())


def render_value(serde: Serde[T], value: T) -> Any:
    """Return a key or value of ``serde`` as something JSON carries, for HTTP responses.

    Strings, numbers (int64 exact; JavaScript rounds beyond 2**53) and JSON come back as they are;
    bytes as a string when they are UTF-8, else as ``{"base64": "..."}``; NaN and infinities as
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. A custom :class:`TextSerde` renders its own; other
    serdes' values come back as they are if orjson encodes them, else as their bytes would.
    """
    if isinstance(serde, TextSerde):
        return serde.to_jsonable(value)
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _BYTES.to_jsonable(serde.serialize(value))
    return value


def _show(value: object) -> str:
    return f"{type(value).__name__} {value!r:.40}"


def _accepted() -> str:
    return ", ".join(repr(name) for name in sorted(_BUILTINS))
