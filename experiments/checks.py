"""The harness's error messages, in the library's one pattern.

The harness uses only the public API of :mod:`fairloss`, so it keeps this one line rather than
import the library's private ``fairloss._validation``.
"""

from __future__ import annotations

__all__ = ["expected"]


def expected(name: str, what: str, got: object) -> str:
    """Format the error-message pattern of the library, for the harness's own checks.

    Example:
        >>> expected("epochs", "an integer of at least 1", "'0'")
        "Expected argument `epochs` to be an integer of at least 1, but got '0'."
    """
    return f"Expected argument `{name}` to be {what}, but got {got}."
