"""Sweep points, dotted paths and run comparison helpers (no database)."""

from app.schemas.sweeps import SweepCreate
from app.services.compare import differs, flatten
from app.services.sweeps import order_of, path_problem, points


def test_grid_points_in_order_and_random_draws_from_the_seed() -> None:
    grid = SweepCreate(base={}, grid={"augmentation.method": ["none", "mixup"],
                                      "training.seed": [0, 1]})
    assert points(grid) == [{"augmentation.method": m, "training.seed": s}
                            for m in ("none", "mixup") for s in (0, 1)]
    space = {"augmentation.alpha": {"log_uniform": [0.1, 32]},
             "training.lr": {"uniform": [0.001, 0.01]},
             "augmentation.method": {"choice": ["none", "mixup"]},
             "training.epochs": {"int_uniform": [1, 3]}}
    draw = SweepCreate(base={}, random={"n": 5, "seed": 3, "space": space},
                       grid={"training.seed": [0, 1]})
    first, again = points(draw), points(draw)
    assert first == again and len(first) == 10
    assert [p["training.seed"] for p in first] == [0] * 5 + [1] * 5
    draws = [{k: v for k, v in p.items() if k != "training.seed"} for p in first]
    assert draws[:5] == draws[5:]  # every grid point gets the same draws
    for p in first:
        assert 0.1 <= p["augmentation.alpha"] <= 32 and 1 <= p["training.epochs"] <= 3
    other = points(SweepCreate(base={}, random={"n": 5, "seed": 4, "space": space}))
    assert other != draws[:5]


def test_dotted_paths() -> None:
    for good in ("augmentation.alpha", "training.seed", "model.kind", "dataset_id",
                 "augmentation.ops.image", "training.early_stopping.patience"):
        assert path_problem(good) is None, good
    assert "has no field 'alpah'" in (path_problem("augmentation.alpah") or "")
    assert "has no fields" in (path_problem("training.seed.x") or "")
    assert "the spec has no field 'nope'" in (path_problem("nope") or "")


def test_order_and_differs() -> None:
    assert [order_of(m) for m in ("test_acc", "val_loss", "test_ece_calibrated", "test_nll")] \
        == ["desc", "asc", "asc", "asc"]
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}
    assert differs({"x": {"a": {"b": 1, "c": 2}}, "y": {"a": {"b": 1, "c": 3, "e": 0}}}) == {
        "a.c": {"x": 2, "y": 3}, "a.e": {"x": None, "y": 0}}
