"""Service-level errors; the API maps them to HTTP, the worker to run states."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from app.ml.data.errors import plain

Loc = tuple[str | int, ...]


class NotFoundError(LookupError):
    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident} not found")


class ConflictError(RuntimeError):
    pass


class FieldError(ValueError):
    """A request value that is well-formed but wrong; ``loc`` is its path."""

    def __init__(self, loc: Loc, message: str) -> None:
        message = plain(message)
        super().__init__(message)
        self.loc = loc
        self.message = message

    @property
    def problems(self) -> list[tuple[Loc, str]]:
        """Every (loc, message) this error stands for: one here, several in ``FieldErrors``."""
        return [(self.loc, self.message)]


class FieldErrors(FieldError):
    """Several field errors of one request, answered together (one 422 with a
    ``detail`` entry each); ``loc`` and ``message`` are the first one's."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        found = [p for error in errors for p in error.problems]
        super().__init__(*found[0])
        self._problems = found

    @property
    def problems(self) -> list[tuple[Loc, str]]:
        return list(self._problems)


class FieldErrorCollector:
    """Run independent checks of one request and raise what they found at once:

    ``with found.check(): ...`` keeps a ``FieldError`` instead of raising it;
    ``found.raise_if_any()`` raises them together."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    @contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except FieldError as exc:
            self.errors.append(exc)

    def add(self, loc: Loc, message: str) -> None:
        self.errors.append(FieldError(loc, message))

    def any_under(self, *prefix: str | int) -> bool:
        """Whether an error was found at ``prefix`` or inside it."""
        return any(loc[:len(prefix)] == prefix for e in self.errors for loc, _ in e.problems)

    def raise_if_any(self) -> None:
        """Raise what was found: the first problem of each field (two checks can
        notice one mistake), one ``FieldError`` or several as ``FieldErrors``."""
        first: dict[Loc, str] = {}
        for error in self.errors:
            for loc, message in error.problems:
                first.setdefault(loc, message)
        if len(first) == 1:
            raise FieldError(*next(iter(first.items())))
        if first:
            raise FieldErrors([FieldError(loc, message) for loc, message in first.items()])


class LimitExceeded(RuntimeError):
    """A project's rate or concurrency limit (runs queued or running): the API
    answers 429 with ``Retry-After``. Size limits are ``FieldError`` (422)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
