"""Service-level errors; the API maps them to HTTP, the worker to run states."""


class NotFoundError(LookupError):
    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident} not found")


class ConflictError(RuntimeError):
    pass


class FieldError(ValueError):
    """A request value that is well-formed but wrong; ``loc`` is its path."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
