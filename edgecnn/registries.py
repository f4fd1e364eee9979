"""`Registry`: the one shape of every registry in edgecnn (export targets, sessions, quantizers, deploy
targets, bench record extensions, the model zoo's `edgecnn.registry`).

A registry is a dict from name to entry, so reading one is plain dict use (`list(TARGETS)`, `in`, `.items()`);
what it adds is registering by decorator, and `lookup`, which answers an unknown name in one line naming the
choices (a `UserError`, never a KeyError with a traceback).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, TypeVar, Union

from edgecnn.errors import UserError

E = TypeVar("E")
T = TypeVar("T")
# An unknown name's message: a template with {what}, {name} (format specs allowed: {name!r}) and {choices};
# or a function of the name.
Unknown = Union[str, Callable[[str], str]]
UNKNOWN = "unknown {what} {name!r}; choose one of {choices}"


class Registry(Dict[str, E]):
    """Entries by name.

    `what` names an entry in messages ("target", "backend"). `@registry.register` files the decorated
    object under its attribute `key` (or the `name` given), as itself or, with `instantiate`, as an
    instance made without arguments, and returns it unchanged. With `unique`, a name registered twice is a
    `ValueError` (a programming error), otherwise the later entry replaces the earlier one.
    """

    def __init__(self, what: str, *, key: str = "name", instantiate: bool = False, unique: bool = False,
                 unknown: Unknown = UNKNOWN, sort_choices: bool = False,
                 before_lookup: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self.what = what
        self.key = key
        self.instantiate = instantiate
        self.unique = unique
        self.unknown = unknown
        self.sort_choices = sort_choices
        self.before_lookup = before_lookup  # fills the registry on first use (the zoo's families register on import)

    def add(self, name: str, entry: E) -> E:
        if self.unique and name in self:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self[name] = entry
        return entry

    def register(self, obj: T | None = None, /, *, name: str | None = None) -> Any:
        """Decorator (`@registry.register`, or `@registry.register(name="...")`) or plain call."""
        def file(target: T) -> T:
            self.add(getattr(target, self.key) if name is None else name,
                     target() if self.instantiate else target)  # type: ignore[operator,arg-type]
            return target
        return file if obj is None else file(obj)

    def names(self) -> list[str]:
        """The registered names, in the order the unknown-name message lists them."""
        if self.before_lookup is not None:
            self.before_lookup()
        return sorted(self) if self.sort_choices else list(self)

    def unknown_error(self, name: str) -> UserError:
        if callable(self.unknown):
            return UserError(self.unknown(name))
        return UserError(self.unknown.format(what=self.what, name=name, choices=", ".join(self.names())))

    def lookup(self, name: str) -> E:
        """The entry registered as `name`, or a one-line `UserError` naming the choices."""
        if self.before_lookup is not None:
            self.before_lookup()
        if name not in self:
            raise self.unknown_error(name)
        return self[name]


__all__ = ["Registry"]
