import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import WRITE_RESPONSES, SessionDep, WriterDep
from app.db.models import ApiKey
from app.schemas.access import KeyCreate, KeyCreated, KeyOut
from app.schemas.common import MAX_OFFSET, Page
from app.services import auth

router = APIRouter(prefix="/keys", tags=["keys"], responses=WRITE_RESPONSES)


def to_out(key: ApiKey) -> KeyOut:
    return KeyOut.model_validate(key, from_attributes=True)


@router.post("", status_code=201, response_model=KeyCreated,
             summary="Create an API key of this project; the reply is the only time the "
                     "key is shown")
def create_key(body: KeyCreate, session: SessionDep, principal: WriterDep) -> KeyCreated:
    row, key = auth.create_key(session, principal.project_id, body.name, body.scope)
    return KeyCreated(**to_out(row).model_dump(), key=key)


@router.get("", response_model=Page[KeyOut],
            summary="The project's API keys, revoked ones included (prefixes, never keys)")
def list_keys(session: SessionDep, principal: WriterDep,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Page[KeyOut]:
    keys = auth.list_keys(session, principal.project_id)
    return Page(items=[to_out(k) for k in keys[offset:offset + limit]], total=len(keys),
                limit=limit, offset=offset)


@router.delete("/{key_id}", status_code=204,
               summary="Revoke an API key of this project: it fails from its next request")
def revoke_key(key_id: uuid.UUID, session: SessionDep, principal: WriterDep) -> Response:
    auth.revoke_key(session, key_id, principal.project_id)
    return Response(status_code=204)
