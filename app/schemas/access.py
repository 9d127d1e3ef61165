"""API keys and project limits as the API and the admin commands take and show them."""

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import StrictModel

Scope = Literal["read", "write"]


class KeyCreate(StrictModel):
    name: str = Field("key", min_length=1, max_length=100,
                      description="What the key is for (shown in listings).")
    scope: Scope = Field(description="read: GET routes and previews. write: everything, "
                                     "key management included.")


class KeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it; the key "
                                    "itself is shown once, at creation, and never stored.")
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key: send it as `Authorization: Bearer <key>`. "
                                 "Shown only in this reply.")


class ProjectLimits(StrictModel):
    """A project's overrides of the settings' defaults (``MIXLAB_LIMIT_<NAME>``);
    a limit left out follows the default."""

    running_runs: int | None = Field(None, ge=1, description="Runs running at once.")
    queued_runs: int | None = Field(None, ge=1, description="Runs waiting in the queue.")
    dataset_bytes: int | None = Field(None, ge=1,
                                      description="Prepared bytes of all its datasets.")
    epoch_samples: int | None = Field(None, ge=1,
                                      description="training.epochs × training samples, per run.")
    model_parameters: int | None = Field(None, ge=1,
                                         description="Parameters of a run's model.")
