"""The error every command reports as a usage error (exit code 2), and settings named in the caller's syntax.

A setting is named ``--exchange-dtype int8`` on the command line and ``exchange_dtype="int8"`` in Python:
checks build their messages with :func:`option`, and the Python API (``decnn.split``) runs them inside
:func:`python_syntax`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_PYTHON_SYNTAX: ContextVar[bool] = ContextVar("decnn_python_syntax", default=False)


class ConfigError(ValueError):
    """A config key, override or flag that is unknown, wrongly typed, out of range or clashes with another;
    the message names it and shows what would work. Raised before any training or process group starts."""


def option(name: str, value: object = None) -> str:
    """The setting ``name`` (a field name, e.g. ``exchange_dtype``), with ``value`` if given, as the caller
    writes it: ``--exchange-dtype int8`` by default, ``exchange_dtype="int8"`` inside :func:`python_syntax`."""
    if _PYTHON_SYNTAX.get():
        if value is None:
            return name
        return f'{name}="{value}"' if isinstance(value, str) else f"{name}={value}"
    flag = "--" + name.replace("_", "-")
    return flag if value is None else f"{flag} {value}"


@contextmanager
def python_syntax() -> Iterator[None]:
    """While open, :func:`option` names settings as Python keyword arguments."""
    token = _PYTHON_SYNTAX.set(True)
    try:
        yield
    finally:
        _PYTHON_SYNTAX.reset(token)
