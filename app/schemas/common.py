from types import UnionType
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

# list offsets beyond this are refused (a database integer has to hold them)
MAX_OFFSET = 1_000_000_000


def _numeric(annotation: Any) -> bool:
    """int or float (or an optional one), but not a type that also takes booleans."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, UnionType):
        args = set(get_args(annotation))
        return bool(args & {int, float}) and bool not in args
    return False


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class StrictModel(BaseModel):
    """Request bodies: unknown fields are an error, not silently dropped, and a
    boolean is not a number (pydantic's lax mode would read true as 1), and no float
    is infinite or NaN (Python's JSON parser reads ``Infinity`` and ``NaN``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _plain_values(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = [f"{name}: must be a number, not a boolean"
                    for name, value in data.items() if isinstance(value, bool)
                    and name in cls.model_fields and _numeric(cls.model_fields[name].annotation)]
        # Postgres text and JSON cannot hold NUL; refuse it here rather than fail there
        problems += [f"{name}: text must not contain NUL characters"
                     for name, value in data.items() if _has_nul(name) or _has_nul(value)]
        if problems:
            raise ValueError("; ".join(problems))
        return data


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="Number of items matching, over all pages.")
    limit: int
    offset: int


class Message(BaseModel):
    detail: str
