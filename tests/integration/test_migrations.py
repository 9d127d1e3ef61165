import uuid

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from app.db.migrate import downgrade, upgrade
from tests.conftest import PG_URL_BASE, create_database, drop_database

pytestmark = pytest.mark.integration


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def _checks(engine: Engine, table: str) -> set[str]:
    return {str(c["name"]) for c in inspect(engine).get_check_constraints(table)}


def test_upgrade_head_then_downgrade_base_on_postgres() -> None:
    name = f"mixlab_mig_{uuid.uuid4().hex[:10]}"
    create_database(name)
    url = f"{PG_URL_BASE}/{name}"
    engine = create_engine(url)
    try:
        upgrade(url)
        assert {"datasets", "experiments", "runs", "metrics"} <= set(
            inspect(engine).get_table_names())
        # steps down and up again: 0007's CHECK on runs.status, 0006's sweeps, 0005's
        # runs.checkpoint_epoch, 0004's runs.init
        assert "sweeps" in inspect(engine).get_table_names()
        assert {"sweep_id", "sweep_point"} <= _columns(engine, "experiments")
        assert "ck_runs_status" in _checks(engine, "runs")
        with engine.connect() as conn, pytest.raises(IntegrityError, match="ck_runs_status"):
            conn.execute(text("INSERT INTO projects (id, name, created_at, limits) VALUES "
                              "(gen_random_uuid(), 'p', now(), '{}')"))
            conn.execute(text(
                "WITH p AS (SELECT id FROM projects LIMIT 1), "
                "d AS (INSERT INTO datasets (id, project_id, name, status, source, created_at,"
                " progress, error_count, attempt) SELECT gen_random_uuid(), p.id, 'd', 'ready',"
                " '{}', now(), 0, 0, 0 FROM p RETURNING id, project_id), "
                "e AS (INSERT INTO experiments (id, project_id, name, dataset_id, task, spec,"
                " created_at) SELECT gen_random_uuid(), d.project_id, 'e', d.id, 'classification',"
                " '{}', now() FROM d RETURNING id) "
                "INSERT INTO runs (id, experiment_id, status, attempt, cancel_requested,"
                " created_at, epoch, step, total_steps, metrics) SELECT gen_random_uuid(), e.id,"
                " 'paused', 0, false, now(), 0, 0, 0, '{}' FROM e"))
        downgrade(url, "0006")
        assert "ck_runs_status" not in _checks(engine, "runs")
        downgrade(url, "0005")
        assert "sweeps" not in inspect(engine).get_table_names()
        assert not {"sweep_id", "sweep_point"} & _columns(engine, "experiments")
        assert {"init", "checkpoint_epoch"} <= _columns(engine, "runs")
        downgrade(url, "0004")
        assert "checkpoint_epoch" not in _columns(engine, "runs")
        assert "init" in _columns(engine, "runs")
        downgrade(url, "0003")
        assert "init" not in _columns(engine, "runs")
        upgrade(url)
        assert {"init", "checkpoint_epoch"} <= _columns(engine, "runs")
        assert {"sweep_id", "sweep_point"} <= _columns(engine, "experiments")
        assert "ck_runs_status" in _checks(engine, "runs")
        downgrade(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        assert "runs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
        drop_database(name)


def test_models_match_migrations(database: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from app.db import Base

    engine = create_engine(database)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    engine.dispose()
    assert diff == []
