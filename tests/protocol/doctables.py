"""Field tables of docs/protocol.md, rendered from the Structs (the doc test compares them).

Each row starts ``| `name` | type | required-or-default |``; the last column, the meaning, is
written by hand in the doc and not compared.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi

from protocol import types

__all__ = ["field_rows", "type_name"]

# The named field types of protocol.types, by the name the doc's "Conventions" defines.
_NAMED = {
    "Id": "id",
    "ClientId": "client id",
    "Nonce": "nonce",
    "Symbol": "symbol",
    "ShortText": "text64",
    "Text": "text1024",
    "Price": "price",
    "Volume": "volume",
    "Money": "money",
    "Size": "size",
    "Ratio": "ratio",
    "Real": "real",
    "TimeMs": "time",
    "Ticket": "ticket",
    "Digits": "digits",
    "Points": "points",
    "Count": "count",
    "RetCode": "int32",
    "Signature": "hex",
    "ErrorDetails": "details",
}
_BY_INFO = [(mi.type_info(getattr(types, name)), label) for name, label in _NAMED.items()]


def type_name(t: mi.Type) -> str:
    """How the doc writes a field's type."""
    for info, label in _BY_INFO:
        if t == info:
            return label
    if isinstance(t, mi.UnionType):
        return " or ".join(type_name(m) for m in t.types)
    if isinstance(t, mi.NoneType):
        return "null"
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.IntType):
        return f"int {t.ge}..{t.le}" if t.ge is not None else "int"
    if isinstance(t, mi.FloatType):
        return "number"
    if isinstance(t, mi.StrType):
        return f"string ≤{t.max_length}" if t.max_length else "string"
    if isinstance(t, mi.EnumType):
        return " / ".join(f'"{m.value}"' for m in t.cls)
    if isinstance(t, mi.LiteralType):
        return " / ".join(f'"{v}"' for v in t.values)
    if isinstance(t, mi.ListType):
        bound = f" (≤{t.max_length})" if t.max_length is not None else ""
        return f"[{type_name(t.item_type)}]{bound}"
    if isinstance(t, mi.StructType):
        return t.cls.__name__
    raise NotImplementedError(repr(t))


def _default(f: mi.Field) -> str:
    if f.required:
        return "required"
    value: Any = f.default if f.default is not msgspec.NODEFAULT else f.default_factory()
    return f"`{msgspec.json.encode(value).decode()}`"


def field_rows(cls: type) -> list[str]:
    """``| `field` | type | default |`` for every field of ``cls``, in order."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return [f"| `{f.name}` | {type_name(f.type)} | {_default(f)} |" for f in info.fields]
