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


class LimitExceeded(RuntimeError):
    """A project's rate or concurrency limit (runs queued or running): the API
    answers 429 with ``Retry-After``. Size limits are ``FieldError`` (422)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
