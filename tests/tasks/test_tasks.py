"""Each task's targets, loss, site metrics and pooled metric, against scikit-learn and hand cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fedmed.config.schema import EvaluationConfig, InputConfig, TaskConfig
from fedmed.data.dataset import ManifestRow
from fedmed.data.targets import TargetError
from fedmed.tasks import available_tasks, create_task

SETTINGS = EvaluationConfig(bootstrap_samples=200)
SPEC = InputConfig()


def _row(**values: str) -> ManifestRow:
    return ManifestRow(file="a.dcm", split="train", line=7, values=values)


def test_every_task_is_registered() -> None:
    assert available_tasks() == ["binary", "multiclass", "multilabel", "segmentation"]


def test_task_config_needs_the_names_of_its_kind() -> None:
    with pytest.raises(ValueError, match="multilabel needs labels"):
        TaskConfig(kind="multilabel")
    with pytest.raises(ValueError, match="binary takes no classes"):
        TaskConfig(kind="binary", classes=["a", "b"])
    with pytest.raises(ValueError, match="repeated"):
        TaskConfig(kind="segmentation", structures=["lesion", "lesion"])
    with pytest.raises(ValueError, match="at least 2"):
        TaskConfig(kind="multiclass", classes=["only"])
    assert TaskConfig(kind="segmentation", structures=["liver", "tumour"]).names == ("liver", "tumour")


def test_binary_matches_scikit_learn_and_pools_exactly_with_fine_groups() -> None:
    task = create_task(TaskConfig())
    rng = np.random.default_rng(0)
    sites = []
    all_labels, all_scores = [], []
    for shift in (0.0, 0.2):
        labels = (rng.random(80) < 0.4).astype(np.float32)
        scores = np.clip(0.3 * labels + shift + 0.3 * rng.random(80), 0, 1)
        evaluation = task.evaluate_site(labels, scores, patients=list(range(80)), min_cell_size=1)
        assert evaluation.metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores))
        sites.append((evaluation.release, evaluation.metrics))
        all_labels.append(labels)
        all_scores.append(scores)
    pooled = task.pooled(sites)
    # groups of one bin: only scores within one of 100 bins tie across sites
    exact = roc_auc_score(np.concatenate(all_labels), np.concatenate(all_scores))
    assert pooled == pytest.approx(exact, abs=0.01)


def test_binary_refuses_a_release_of_another_layout() -> None:
    task = create_task(TaskConfig())
    with pytest.raises(ValueError, match="quadruples"):
        task.pooled([([1.0, 2.0, 3.0], {"auroc": 0.5})])
    with pytest.raises(ValueError, match="bins must lie"):
        task.pooled([([0.0, 250.0, 3.0, 4.0], {"auroc": 0.5})])


def test_multilabel_reads_each_label_and_skips_a_row_missing_one(tmp_path: Path) -> None:
    task = create_task(TaskConfig(kind="multilabel", labels=["nodule", "effusion"]))
    assert task.manifest_columns() == ("nodule", "effusion")
    target = task.read_target(_row(nodule="1", effusion="0"), site_dir=tmp_path, sources=[], spec=SPEC)
    assert target.tolist() == [1.0, 0.0]
    with pytest.raises(TargetError, match="line 7 has nothing in column 'effusion'; give 0 or 1"):
        task.read_target(_row(nodule="1", effusion=""), site_dir=tmp_path, sources=[], spec=SPEC)
    with pytest.raises(TargetError, match="'yes' in column 'nodule'"):
        task.read_target(_row(nodule="yes", effusion="1"), site_dir=tmp_path, sources=[], spec=SPEC)


def test_multilabel_per_label_auroc_macro_and_pooling() -> None:
    task = create_task(TaskConfig(kind="multilabel", labels=["a", "b", "c"]))
    rng = np.random.default_rng(1)
    targets = (rng.random((120, 3)) < 0.4).astype(np.float32)
    scores = np.clip(0.35 * targets + 0.5 * rng.random((120, 3)), 0, 1)
    evaluation = task.evaluate_site(targets, scores, patients=list(range(120)), min_cell_size=1)
    for k, name in enumerate("abc"):
        assert evaluation.metrics[f"auroc_{name}"] == pytest.approx(roc_auc_score(targets[:, k], scores[:, k]))
    assert evaluation.metrics["macro_auroc"] == pytest.approx(roc_auc_score(targets, scores, average="macro"))
    # one site: the pooled macro AUROC is the site's own
    assert task.pooled([(evaluation.release, evaluation.metrics)]) == pytest.approx(evaluation.metrics["macro_auroc"])
    cell = task.evaluate_cell(targets, scores, patients=120, settings=SETTINGS, min_cell_size=10, seed=0)
    low, high = cell["macro_auroc_ci"]
    assert low < cell["macro_auroc"] < high
    assert cell["auroc_b"] == pytest.approx(roc_auc_score(targets[:, 1], scores[:, 1]))
    assert task.evaluate_cell(targets, scores, patients=5, settings=SETTINGS, min_cell_size=10, seed=0) == {
        "suppressed": True}
    with pytest.raises(ValueError, match="names output 7"):
        task.pooled([([7.0, 0.0, 1.0, 2.0, 3.0], {})])


def test_multiclass_matches_one_vs_rest_scikit_learn(tmp_path: Path) -> None:
    task = create_task(TaskConfig(kind="multiclass", classes=["mild", "moderate", "severe"]))
    assert task.read_target(_row(label="severe"), site_dir=tmp_path, sources=[], spec=SPEC) == 2
    assert task.read_target(_row(label="1"), site_dir=tmp_path, sources=[], spec=SPEC) == 1
    with pytest.raises(TargetError, match="give one of mild, moderate, severe"):
        task.read_target(_row(label="grave"), site_dir=tmp_path, sources=[], spec=SPEC)
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + 1.5 * np.eye(3)[targets]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    evaluation = task.evaluate_site(targets, probabilities, patients=list(range(150)), min_cell_size=1)
    expected = roc_auc_score(targets, probabilities, multi_class="ovr", average="macro")
    assert evaluation.metrics["macro_auroc"] == pytest.approx(expected)
    assert evaluation.metrics["accuracy"] == pytest.approx(np.mean(probabilities.argmax(1) == targets))
    loss = task.loss(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(targets))
    assert float(loss) == pytest.approx(evaluation.metrics["eval_loss"], rel=1e-4)


def test_segmentation_pooled_dice_is_the_mean_over_every_sites_cases() -> None:
    task = create_task(TaskConfig(kind="segmentation", structures=["organ", "lesion"]))
    assert task.outputs == 3
    rng = np.random.default_rng(3)
    sites, per_case = [], []
    for _ in range(3):
        targets = rng.integers(0, 3, (10, 16, 16))
        noisy = np.where(rng.random((10, 16, 16)) < 0.2, rng.integers(0, 3, (10, 16, 16)), targets)
        evaluation = task.evaluate_site(targets, noisy, patients=list(range(10)), min_cell_size=1)
        sites.append((evaluation.release, evaluation.metrics))
        for t, p in zip(targets, noisy, strict=True):
            per_case.append([2 * np.sum((t == k) & (p == k)) / (np.sum(t == k) + np.sum(p == k)) for k in (1, 2)])
    expected = float(np.mean(np.mean(per_case, axis=0)))
    assert task.pooled(sites) == pytest.approx(expected)
    with pytest.raises(ValueError, match="cannot exceed"):
        task.pooled([([2.0, 5.0, 2.0, 1.0], {})])


def test_segmentation_loss_trains_and_survives_an_empty_batch() -> None:
    task = create_task(TaskConfig(kind="segmentation", structures=["lesion"]))
    logits = torch.zeros((0, 2, 8, 8), requires_grad=True)
    loss = task.loss(logits, torch.zeros((0, 8, 8), dtype=torch.int64))
    loss.backward()
    assert float(loss.detach()) == 0.0
    targets = torch.zeros((2, 8, 8), dtype=torch.int64)
    targets[:, 2:5, 2:5] = 1
    good = torch.stack([1.0 - targets.float(), targets.float()], dim=1) * 10
    assert float(task.loss(good, targets)) < float(task.loss(-good, targets))
