"""Option sets as ``typing.Literal`` types, checked in one place.

>>> check_option("rope", "pre", Rope)
'pre'
>>> check_option("rope", "prerope", Rope)
Traceback (most recent call last):
...
ValueError: rope must be one of 'post', 'pre'; got 'prerope'
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, get_args

__all__ = ["Projection", "Read", "Rope", "Span", "Window", "check_option"]

Rope = Literal["post", "pre"]  #: keys as attention uses them, or with the rotary embedding undone
Window = Literal["full", "layer"]  #: all tokens, or only those a sliding-window layer attends to
Span = Literal["all", "content", "prompt", "response", "system", "user"]  #: which tokens enter a state
Read = Literal["prompt_end", "end"]  #: where a state is read: before the reply or after it
Projection = Literal["gaussian", "sparse"]  #: seeded random projection of wide vectors

T = TypeVar("T")


def check_option(name: str, value: T, options: Any) -> T:
    """``value`` if it is one of the ``Literal`` ``options``, else a one-line ``ValueError``."""
    allowed = get_args(options)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return value
