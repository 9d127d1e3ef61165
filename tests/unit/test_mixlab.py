"""The public ``mixlab`` package: the names it promises, that ``import mixlab`` stays
on the torch side, and that a user's own ``app`` folder is named, not imported."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import mixlab

ROOT = Path(__file__).resolve().parents[2]
# what a notebook must not pay for (or be broken by) when it only mixes or trains
WEB_DB_QUEUE = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg",
                "celery", "kombu", "redis", "pydantic", "pydantic_settings", "httpx")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                       "PATH": "/usr/bin:/bin"})


def test_the_promised_names_are_the_internal_objects() -> None:
    from app.client import MixlabClient
    from app.ml import checkpoint, mixing, models, training
    from mixlab.client import MixlabClient as PublicClient

    promised = {"mix", "MixSpec", "Mixed", "METHODS", "register_method", "sample_beta",
                "train", "TrainSpec", "ModelSpec", "build_model", "load_checkpoint"}
    assert promised <= set(mixlab.__all__)
    assert all(hasattr(mixlab, name) for name in mixlab.__all__)
    assert mixlab.mix is mixing.mix and mixlab.METHODS is mixing.METHODS
    assert mixlab.train is training.train and mixlab.TrainSpec is training.TrainSpec
    assert mixlab.build_model is models.build_model
    assert mixlab.load_checkpoint is checkpoint.load_checkpoint
    assert PublicClient is MixlabClient
    assert mixlab.__doc__ and "stable public API" in mixlab.__doc__


def test_mix_through_the_public_name() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g)
    out = mixlab.mix({"image": images}, torch.tensor([0, 1, 2, 0]),
                     mixlab.MixSpec(method="cutmix"), g, num_classes=3)
    assert isinstance(out, mixlab.Mixed)
    assert out.inputs["image"].shape == images.shape and out.targets.shape == (4, 3)
    torch.testing.assert_close(out.targets.sum(1), torch.ones(4))
    assert "mixup_cutmix" in mixlab.METHODS


def test_import_mixlab_loads_no_web_db_or_queue_code() -> None:
    code = f"""
import json, sys
import mixlab
mixlab.mix
internal = ("app.api", "app.db", "app.services", "worker")
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] in {WEB_DB_QUEUE!r} or m.startswith(internal))))
"""
    done = _python(code, ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_users_own_app_folder_is_named_not_imported(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("print('the user app ran')\n")
    done = _python("import mixlab", tmp_path)
    assert done.returncode != 0
    assert "ImportError" in done.stderr and str(tmp_path / "app") in done.stderr
    assert "the user app ran" not in done.stdout
    done = _python("from mixlab.client import MixlabClient", tmp_path)
    assert done.returncode != 0 and "Rename it" in done.stderr
