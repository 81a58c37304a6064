"""Hypothesis strategies for every wire type, derived from the Structs themselves.

``valid(T)`` reads the type through ``msgspec.inspect`` (bounds, patterns, tags, unions) and
generates only values the decoder must accept, so a new field or a tightened bound is covered
without touching the tests. ``mutated(T)`` takes such a value as builtins and breaks one thing in
it: a field replaced by a value of another type, or by one just out of its bounds.
"""

from __future__ import annotations

import functools
import math
import re
import string
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from protocol.types import Id, Nonce, Symbol

__all__ = ["any_json_value", "mutated", "valid", "valid_builtins"]

_MAX_LIST = 4


_ALNUM = string.ascii_letters + string.digits
# (first character, the others) of each pattern in protocol.types. st.from_regex would do, at
# ten times the cost; the result is still checked against the pattern below.
_PATTERN_CHARS: dict[str | None, tuple[str, str]] = {
    mi.type_info(Id).pattern: (_ALNUM, _ALNUM + "_.:@-"),  # type: ignore[attr-defined]
    mi.type_info(Nonce).pattern: (_ALNUM + "_-", _ALNUM + "_-"),  # type: ignore[attr-defined]
    mi.type_info(Symbol).pattern: (_ALNUM + "_.#-+!", _ALNUM + "_.#-+!"),  # type: ignore[attr-defined]
}


def _text(t: mi.StrType) -> st.SearchStrategy[str]:
    lo = t.min_length or 0
    hi = max(lo, min(t.max_length if t.max_length is not None else 24, 24))
    if t.pattern is None:
        return st.text(min_size=lo, max_size=hi)
    if t.pattern not in _PATTERN_CHARS:
        return st.from_regex(t.pattern, fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
    first, rest = _PATTERN_CHARS[t.pattern]
    pattern = re.compile(t.pattern)
    return st.builds(
        str.__add__,
        st.sampled_from(first),
        st.text(alphabet=rest, min_size=max(lo - 1, 0), max_size=hi - 1),
    ).filter(pattern.search)


def _float(t: mi.FloatType) -> st.SearchStrategy[float]:
    lo = t.gt if t.gt is not None else t.ge
    hi = t.lt if t.lt is not None else t.le
    return st.floats(
        min_value=lo,
        max_value=hi,
        exclude_min=t.gt is not None,
        exclude_max=t.lt is not None,
        allow_nan=False,
        allow_infinity=False,
    )


def _int(t: mi.IntType) -> st.SearchStrategy[int]:
    lo = t.gt + 1 if t.gt is not None else t.ge
    hi = t.lt - 1 if t.lt is not None else t.le
    return st.integers(min_value=lo, max_value=hi)


def _strategy(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.StructType):
        return _struct(t)
    if isinstance(t, mi.UnionType):
        return st.one_of([_strategy(member) for member in t.types])
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        return _int(t)
    if isinstance(t, mi.FloatType):
        return _float(t)
    if isinstance(t, mi.StrType):
        return _text(t)
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.ListType):
        hi = min(t.max_length if t.max_length is not None else _MAX_LIST, _MAX_LIST)
        return st.lists(_strategy(t.item_type), min_size=t.min_length or 0, max_size=hi)
    if isinstance(t, mi.DictType):
        hi = min(t.max_length if t.max_length is not None else _MAX_LIST, _MAX_LIST)
        return st.dictionaries(_strategy(t.key_type), _strategy(t.value_type), max_size=hi)
    raise NotImplementedError(f"no strategy for {t!r}")


def _struct(t: mi.StructType) -> st.SearchStrategy[Any]:
    required = {f.name: _strategy(f.type) for f in t.fields if f.required}
    optional = {f.name: _strategy(f.type) for f in t.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: t.cls(**kw))


@functools.cache
def valid(tp: Any) -> st.SearchStrategy[Any]:
    """Instances of ``tp`` (a Struct or a union of Structs) that its decoder must accept."""
    return _strategy(mi.type_info(tp))


@functools.cache
def valid_builtins(tp: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Like :func:`valid`, as the dicts and lists a peer would encode."""
    return valid(tp).map(msgspec.to_builtins)


# -- breaking things ---------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_EDGE_NUMBERS = [0, -1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 1e308, -1e308, -0.0, 5e-324]
_EDGE_TEXTS = ["", "x" * 70, "x" * 1100, "a\nb", "\x00", "é", "tw:P1\n"]
_EDGES = st.sampled_from([*_EDGE_NUMBERS, *_EDGE_TEXTS, [], {}, [1, 2], {"type": "nope"}])


def any_json_value(depth: int = 2) -> st.SearchStrategy[Any]:
    """Any JSON-representable value (finite numbers), nested up to ``depth``."""
    if depth <= 0:
        return _SCALARS
    inner = any_json_value(depth - 1)
    return st.one_of(
        _SCALARS,
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    )


# Built once: strategies are cheap to draw from and expensive to build.
_REPLACEMENTS = st.one_of(any_json_value(), _EDGES)
_REPLACEMENTS_WITH_SPECIAL_FLOATS = st.one_of(
    _REPLACEMENTS, st.sampled_from([math.nan, math.inf, -math.inf])
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((*prefix, key))
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.append((*prefix, index))
            out.extend(_paths(item, (*prefix, index)))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@st.composite
def mutated(draw: st.DrawFn, tp: Any, *, special_floats: bool = False) -> Any:
    """A valid ``tp`` as builtins, with one field (at any depth) replaced or removed.

    ``special_floats`` also draws NaN and the infinities (msgpack can carry them; JSON cannot).
    """
    base = draw(valid_builtins(tp))
    paths = _paths(base)
    if not paths:
        return base
    path = draw(st.sampled_from(paths))
    choices = _REPLACEMENTS_WITH_SPECIAL_FLOATS if special_floats else _REPLACEMENTS
    action = draw(st.sampled_from(["replace", "replace", "remove"]))
    if action == "remove" and isinstance(path[-1], str):
        parent = _get(base, path[:-1])
        reduced = {k: v for k, v in parent.items() if k != path[-1]}
        return _replace(base, path[:-1], reduced)
    return _replace(base, path, draw(choices))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value
