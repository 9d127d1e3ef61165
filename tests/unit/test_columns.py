"""Streaming column encoders: codes as rows arrive, orders decided at the end."""

import numpy as np
import pytest

from app.ml.data import DataValidationError
from app.ml.data.columns import CategoryColumn, LabelColumn, TokenColumn, strata
from app.ml.data.issues import DataIssues, Issues


def test_labels_single_and_multi() -> None:
    issues = Issues(20)
    single = LabelColumn("y", 4, False, 10, issues)
    for row, value in enumerate(["b", "a", "b", "c"]):
        single.add(row, value)
    labels, names = single.finish()
    assert names == ["a", "b", "c"] and labels.tolist() == [1, 0, 1, 2]
    multi = LabelColumn("y", 3, True, 10, issues)
    for row, value in enumerate([["x", "z"], "z|y", []]):
        multi.add(row, value)
    labels, names = multi.finish()
    assert names == ["x", "y", "z"] and labels.dtype == np.uint8
    assert labels.tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 0]]


def test_missing_labels_are_issues_and_ids_stop_early() -> None:
    issues = Issues(20)
    column = LabelColumn("y", 3, False, 10, issues)
    column.add(0, None)
    column.add(1, float("nan"))
    column.add(2, [1, 2])
    with pytest.raises(DataIssues) as info:
        issues.raise_if_any()
    assert info.value.entries == [("y", "missing in 2 rows: 0, 1"), (
        "y", "holds a list (multi-label); set multilabel in the spec at row 2")]
    ids = LabelColumn("y", 100, False, 10, Issues(20))
    with pytest.raises(DataValidationError, match="more than 20 distinct values"):
        for row in range(100):
            ids.add(row, f"id{row}")


def test_strata_is_the_rarest_label() -> None:
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0]], np.uint8)
    assert strata(labels).tolist() == [1, 0, 2, 3]
    assert strata(np.array([2, 0, 1])).tolist() == [2, 0, 1]


def test_tokens_vocabulary_from_the_train_rows() -> None:
    column = TokenColumn(4, 3)
    for row, words in enumerate([["a", "b"], ["b", "c", "b"], ["d"], ["a"]]):
        column.add(row, words)
    train = np.array([True, True, False, True])
    ids, vocab = column.finish(train, vocab_size=4)
    assert vocab == ["<pad>", "<unk>", "b", "a"]  # by train frequency, then by word
    assert ids.tolist() == [[3, 2, 0], [2, 1, 2], [1, 0, 0], [3, 0, 0]]


def test_categories_seen_in_training_only() -> None:
    column = CategoryColumn(4)
    for row, value in enumerate(["rome", None, "oslo", "lima"]):
        column.add(row, value)
    out = np.zeros(4, np.float32)
    names = column.finish(np.array([True, True, True, False]), "city", 10, out)
    assert names == ["oslo", "rome"] and out.tolist() == [2.0, 0.0, 1.0, 0.0]
    with pytest.raises(DataValidationError, match="too many categories: 3"):
        column.finish(np.ones(4, bool), "city", 1, out)
