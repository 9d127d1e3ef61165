"""app.ml.tasks: which labels a task takes, its loss on mixed targets, its smoothing."""

import pytest
import torch
import torch.nn.functional as F

from app.ml.data.synthetic import load_synthetic
from app.ml.metrics import multilabel_nll
from app.ml.mixing import MixSpec, mix
from app.ml.tasks import CLASSIFICATION, MULTILABEL, TASKS, get_task


def test_registry_and_unknown_task():
    assert TASKS == {"classification": CLASSIFICATION, "multilabel": MULTILABEL}
    assert get_task("multilabel") is MULTILABEL and get_task(MULTILABEL) is MULTILABEL
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        get_task("regression")


def test_each_task_takes_its_own_labels():
    single = load_synthetic(num_samples=100, modalities=("tabular",))
    multi = load_synthetic(num_samples=100, modalities=("tabular",), labels_per_sample=2)
    assert not single.multilabel and multi.multilabel
    CLASSIFICATION.check(single)
    MULTILABEL.check(multi)
    with pytest.raises(ValueError, match="needs multi-label targets"):
        MULTILABEL.check(single)
    with pytest.raises(ValueError, match="use 'multilabel'"):
        CLASSIFICATION.check(multi)


def test_mixup_of_multi_hot_targets_is_the_convex_combination():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(16, 5, generator=g) < 0.4).to(torch.uint8)
    out = mix({"tabular": torch.randn(16, 3, generator=g)}, y, MixSpec("mixup"), g, 5)
    lam = out.lam[:, None]
    torch.testing.assert_close(out.targets, lam * y.float() + (1 - lam) * y[out.index].float())
    assert ((out.targets >= 0) & (out.targets <= 1)).all()


def test_multilabel_smoothing_pulls_each_class_towards_one_half():
    spec = MixSpec("mixup", label_smoothing=0.2)
    mix_spec, smoothing = MULTILABEL.mix_spec(spec)
    assert mix_spec.label_smoothing == 0.0 and smoothing == 0.2  # not mix()'s 1/K smoothing
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(MULTILABEL.targets(y, smoothing), torch.tensor([[0.9, 0.1, 0.1,
                                                                               0.1]]))
    # classification leaves smoothing to mix(), which spreads it over the K classes
    assert CLASSIFICATION.mix_spec(spec) == (spec, 0.0)
    assert CLASSIFICATION.targets(y, 0.0) is y


def test_losses():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 3, generator=g)
    soft = torch.rand(8, 3, generator=g)
    expected = F.binary_cross_entropy_with_logits(logits, soft, reduction="none").sum(1).mean()
    torch.testing.assert_close(MULTILABEL.loss(logits, soft), expected)
    assert MULTILABEL.nll is multilabel_nll
    labels = torch.randint(0, 3, (8,), generator=g)
    torch.testing.assert_close(CLASSIFICATION.nll(logits, labels),
                               F.cross_entropy(logits, labels))
