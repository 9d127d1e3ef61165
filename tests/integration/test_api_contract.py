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
"""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core import NOT_SET
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from app.api.main import app

pytestmark = pytest.mark.integration

schema = schemathesis.openapi.from_asgi("/openapi.json", app)
EXAMPLES = int(os.environ.get("MIXLAB_CONTRACT_EXAMPLES", "25"))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_the_contract(case, access) -> None:  # type: ignore[no-untyped-def]
    excluded = [positive_data_acceptance]
    if case.body is None or case.body is NOT_SET:
        excluded.append(negative_data_rejection)
    case.call_and_validate(headers=access.headers, excluded_checks=excluded)
