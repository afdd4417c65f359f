"""One error type for bad input: the CLI prints its message as one line and exits 2."""

from __future__ import annotations

import importlib


class TascError(Exception):
    """A problem the user can fix; the message says what and how."""


def require(module: str, extra: str) -> object:
    """Import an optional dependency or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TascError(f"`{module}` is not installed: pip install 'tasc-edge[{extra}]'") from e
