"""The OpenAPI schema is the contract: schemathesis generates requests for every
operation from it and checks the live app's replies (in process, over ASGI, on
the test database, with the tests project's write key).

Checked: no 5xx; every status, content type, header and body the schema
documents; schema-violating bodies are refused. Not checked: that every
schema-valid request is accepted (schemathesis's positive-data check): some
rules span fields or depend on the dataset (a cutmix box range, a modality the
dataset lacks) and are 422s that a JSON Schema cannot express; and its
negative-data check on query strings and headers: unknown query parameters are
ignored, as by most HTTP APIs, and the check strips the Authorization header
that every call here adds back (``tests/integration/test_access.py`` proves
the key is required on every route). A longer run: ``benchmarks/api_fuzz.py``.

The stateful phase follows the schema's links (an operation that creates an
id → those that take it): a dataset just registered is still preparing here
(no worker runs), so its previews and an experiment on it meet the documented
409s; an experiment on it is refused, so its run links are exercised by the
other integration tests.
"""

import os
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core import NOT_SET
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from sqlalchemy import delete, select, update

from app.api.main import app
from app.db.models import ApiKey, Dataset, Experiment
from app.db.session import session_scope
from app.services import auth, datasets, experiments
from app.storage import get_store

pytestmark = pytest.mark.integration

# the live-events stream follows a run until it ends, which a queued run made by
# these tests never does; tests/integration/test_run_events.py covers it
STREAMS = r"/events$"
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path_regex=STREAMS)
EXAMPLES = int(os.environ.get("MIXLAB_CONTRACT_EXAMPLES", "25"))


def _excluded(case) -> list:  # type: ignore[no-untyped-def]
    excluded = [positive_data_acceptance]
    if case.body is None or case.body is NOT_SET:
        excluded.append(negative_data_rejection)
    return excluded


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_the_contract(case, access) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(headers=access.headers, excluded_checks=_excluded(case))


def _reset(project_id: uuid.UUID, key_id: uuid.UUID) -> None:
    """Remove what a sequence made (files included), so every sequence starts from
    the same state: Hypothesis replays choices, and a listing that grew since
    would hand the next sequence other ids to follow (a flaky strategy)."""
    store = get_store()
    with session_scope() as session:
        for experiment_id in session.scalars(select(Experiment.id).where(
                Experiment.project_id == project_id)).all():
            experiments.delete(session, project_id, store, experiment_id)
        for dataset_id in session.scalars(select(Dataset.id).where(
                Dataset.project_id == project_id)).all():
            datasets.delete(session, project_id, store, dataset_id)
        session.execute(delete(ApiKey).where(ApiKey.project_id == project_id,
                                             ApiKey.id != key_id))
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=None))
        session.commit()


def test_linked_operations_keep_the_contract(database: str) -> None:
    """Sequences of calls along the links, each reply checked as above. Positive
    data only (the stateless test covers refusals), and as a project of its own:
    links inferred from listings reach real ids, and what the sequences delete or
    revoke must not be the other tests' datasets or key."""
    with session_scope() as session:
        project_id = auth.create_project(session, f"contract-{uuid.uuid4().hex[:6]}").id
        row, key = auth.create_key(session, project_id, "contract", "write")
        key_id = row.id
    headers = {"Authorization": f"Bearer {key}"}
    linked = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path_regex=STREAMS)
    linked.config.generation.update(modes=[GenerationMode.POSITIVE])

    class Linked(linked.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            _reset(project_id, key_id)

        def get_call_kwargs(self, case):  # type: ignore[no-untyped-def]
            return {"headers": headers}

        def validate_response(self, response, case, additional_checks=None,  # type: ignore[no-untyped-def]
                              **kwargs):
            case.validate_response(response, headers=headers, excluded_checks=_excluded(case))

    try:
        Linked.run(settings=settings(max_examples=EXAMPLES, stateful_step_count=6,
                                     deadline=None, suppress_health_check=list(HealthCheck)))
    finally:
        _reset(project_id, key_id)
