"""What every stack function shares: its two errors and the progress it reports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class StackError(RuntimeError):
    """A runtime failure: a service did not come up, the broker is unreachable..."""


class BadInput(StackError):
    """The operator's input is wrong (a config file, a section name, an address)."""


class Step(Protocol):
    """One long operation in progress, as shown to the operator."""

    def advance(self, detail: str = "") -> None:
        """One unit of `total` done (for steps that have a total); `detail` says which."""

    def update(self, detail: str) -> None:
        """What the step is doing now, or (last call) what it achieved."""


class Progress(Protocol):
    def step(self, what: str, total: int | None = None) -> AbstractContextManager[Step]:
        """A step named `what`; it is finished when the context exits without error."""
        ...


class _QuietStep:
    def advance(self, detail: str = "") -> None:
        pass

    def update(self, detail: str) -> None:
        pass


class Quiet:
    """Progress that shows nothing (library use, tests)."""

    @contextmanager
    def _step(self) -> Iterator[Step]:
        yield _QuietStep()

    def step(self, what: str, total: int | None = None) -> AbstractContextManager[Step]:
        return self._step()


QUIET = Quiet()
