"""Classification metrics and the over/underfitting rule."""

from __future__ import annotations

import pytest
import torch

from dsconv.evaluation.metrics import classification_metrics, fit_diagnosis


def test_classification_metrics_match_hand_counts():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    metrics = classification_metrics(torch.nn.functional.one_hot(preds, 3).float(), labels, ("a", "b", "c"))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # precision a: 1/2, b: 2/3, c: 1/1; recall a: 1/2, b: 1, c: 1/2
    assert metrics["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics["per_class_f1"]["b"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_report_equals_scikit_learn(seed):
    from sklearn.metrics import classification_report, confusion_matrix

    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (300,), generator=gen)
    labels[labels == 4] = 3  # class 4 has no support and is never predicted: the zero-division branch
    logits = torch.randn(300, 5, generator=gen)
    logits[:, 4] = -10.0
    classes = ("a", "b", "c", "d", "e")
    ours = classification_metrics(logits, labels, classes)
    expected = classification_report(
        labels.numpy(),
        logits.argmax(1).numpy(),
        labels=list(range(5)),
        target_names=list(classes),
        output_dict=True,
        zero_division=0,
    )
    assert ours["report"].keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, dict):
            assert ours["report"][key] == pytest.approx(value, abs=1e-12), key
        else:
            assert ours["report"][key] == pytest.approx(value, abs=1e-12)
    assert (
        ours["confusion_matrix"]
        == confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), labels=list(range(5))).tolist()
    )
    assert ours["f1_macro"] == pytest.approx(expected["macro avg"]["f1-score"], abs=1e-12)


def _history(train_losses, val_losses, train_acc=0.95, val_acc=0.95):
    return [
        dict(epoch=i + 1, train_loss=t, val_loss=v, train_acc=train_acc, val_acc=val_acc)
        for i, (t, v) in enumerate(zip(train_losses, val_losses))
    ]


def test_rising_validation_loss_is_overfitting():
    history = _history([0.5, 0.4, 0.38, 0.37, 0.365], [0.3, 0.2, 0.25, 0.28, 0.3])
    assert fit_diagnosis(history, best_epoch=2)["verdict"] == "overfitting"


def test_one_noisy_epoch_is_not_overfitting():
    history = _history([0.5, 0.4, 0.38, 0.37, 0.365], [0.3, 0.25, 0.22, 0.2, 0.23])
    assert fit_diagnosis(history, best_epoch=4)["verdict"] == "good fit"


def test_large_accuracy_gap_is_overfitting():
    history = _history([0.5, 0.4, 0.38], [0.3, 0.25, 0.24], train_acc=0.99, val_acc=0.9)
    assert fit_diagnosis(history, best_epoch=3)["verdict"] == "overfitting"


def test_low_training_accuracy_or_falling_loss_is_underfitting():
    assert (
        fit_diagnosis(_history([2.0, 1.9, 1.85], [2.0, 1.9, 1.8], train_acc=0.4, val_acc=0.4), best_epoch=3)["verdict"]
        == "underfitting"
    )
    assert (
        fit_diagnosis(_history([1.0, 0.8, 0.6, 0.45], [0.9, 0.7, 0.5, 0.4]), best_epoch=4)["verdict"] == "underfitting"
    )
