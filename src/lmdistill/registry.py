"""A small name -> object registry for things that recipes name (cleaning rules, ensemble rules, ...)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "did_you_mean"]


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a " Did you mean: x?" suffix for an unknown ``name``, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class Registry(Generic[T]):
    """Maps explicit string keys to objects; unknown keys fail with suggestions.

    Args:
        kind (str): what the registry holds, used in error messages (e.g. "cleaning rule").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            KeyError: naming the unknown key, the known keys and the closest matches.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise KeyError(f"Unknown {self.kind} {name!r}.{did_you_mean(name, self.names())} Known: {known}") from None

    def names(self) -> list[str]:
        """Sorted registered keys."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
