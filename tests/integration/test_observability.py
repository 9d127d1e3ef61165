"""GET /metrics (Prometheus) and the verified-key cache's bound."""

import time
import uuid

import httpx
import pytest

from app.db.session import session_scope
from app.services import auth

pytestmark = pytest.mark.integration


def test_metrics_are_aggregated_and_name_no_object(stack, client, access) -> None:  # type: ignore[no-untyped-def]
    run_id = str(uuid.uuid4())
    assert httpx.get(f"{stack.base_url}/v1/runs/{run_id}", headers=access.headers
                     ).status_code == 404
    reply = httpx.get(f"{stack.base_url}/metrics")  # no key needed
    assert reply.status_code == 200
    text = reply.text
    assert 'route="/v1/runs/{run_id}"' in text and run_id not in text
    assert 'mixlab_http_request_duration_seconds_bucket' in text
    assert 'mixlab_runs{status="queued"}' in text
    assert "mixlab_running_samples_per_second" in text
    assert "mixlab_queue_depth" in text
    assert str(access.project_id) not in text and access.key not in text


def test_a_key_revoked_elsewhere_fails_within_the_cache_bound(stack, access) -> None:  # type: ignore[no-untyped-def]
    # revoked by another process (this one, not the API's): the API may go on
    # trusting it for at most auth.KEY_CACHE_S
    with session_scope() as session:
        row, key = auth.create_key(session, access.project_id, "short", "read")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{stack.base_url}/v1/runs", headers=headers).status_code == 200
    with session_scope() as session:
        auth.revoke_key(session, row.id)
    revoked_at = time.monotonic()
    time.sleep(auth.KEY_CACHE_S + 0.2)
    assert httpx.get(f"{stack.base_url}/v1/runs", headers=headers).status_code == 401
    assert time.monotonic() - revoked_at < auth.KEY_CACHE_S + 5


def test_the_cache_forgets_a_key_revoked_in_process(access) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        row, key = auth.create_key(session, access.project_id, "cached", "read")
        assert auth.authenticate(session, key) is not None
        assert auth.cached(key) is not None
        auth.revoke_key(session, row.id)
        assert auth.cached(key) is None
        assert auth.authenticate(session, key) is None
