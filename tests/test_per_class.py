"""Per-class and class-averaged retrieval metrics against pytorch-metric-learning's AccuracyCalculator.

pytorch-metric-learning comes with requirements-extra.txt, which CI installs. Its default knn needs faiss,
which is bench-only, so its calculator searches here with its own exact torch knn (CustomKNN, Euclidean
LpDistance); the embeddings are continuous random data, so no two distances tie and both rankings agree.
"""
import csv
import io
import json

import pytest
import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator, maybe_get_avg_of_avgs
from pytorch_metric_learning.utils.inference import CustomKNN

from metric.per_class import per_class_csv
from metric.retrieval import per_query_metrics, retrieval_metrics
from minidata import make_cub
from small_run import SMALL, run_main

KS = [1, 2, 4]


class _WithRecall(AccuracyCalculator):
    """PML's calculator plus Recall@K (a positive among the K nearest) for the KS, averaged by PML."""

    def _recall(self, k, knn_labels, query_labels):
        hit = (knn_labels[:, :k] == query_labels[:, None]).any(dim=1).double()
        return maybe_get_avg_of_avgs(hit, query_labels, self.avg_of_avgs, self.return_per_class)

    def calculate_recall_at_1(self, knn_labels, query_labels, **kwargs):
        return self._recall(1, knn_labels, query_labels)

    def calculate_recall_at_2(self, knn_labels, query_labels, **kwargs):
        return self._recall(2, knn_labels, query_labels)

    def calculate_recall_at_4(self, knn_labels, query_labels, **kwargs):
        return self._recall(4, knn_labels, query_labels)

    def requires_knn(self):
        return super().requires_knn() + [f"recall_at_{k}" for k in KS]


def _pml(query, q_labels, gallery=None, g_labels=None, **kwargs):
    calc = _WithRecall(include=("precision_at_1", "mean_average_precision_at_r", "r_precision")
                       + tuple(f"recall_at_{k}" for k in KS), k=None,
                       knn_func=CustomKNN(LpDistance(normalize_embeddings=False)), **kwargs)
    return calc.get_accuracy(query, q_labels, gallery, g_labels, ref_includes_query=gallery is None)


def _uneven(n_classes, seed, n=None):
    """Random embeddings in clusters of 2-12 items (SOP-like), labels in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 13, (n_classes,), generator=g)
    labels = torch.repeat_interleave(torch.arange(n_classes) * 7 + 3, sizes)  # labels need not be 0..C-1
    labels = labels[torch.randperm(len(labels), generator=g)]
    centres = torch.randn(n_classes * 7 + 3, 16, generator=g)
    return centres[labels] + 1.5 * torch.randn(len(labels), 16, generator=g), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_class_averages_equal_pml_avg_of_avgs_in_self_retrieval(seed):
    emb, labels = _uneven(40, seed)
    ours = retrieval_metrics(emb, labels, None, None, KS, ("recall", "map_r", "per_class"))
    pml = _pml(emb, labels, avg_of_avgs=True)
    plain = _pml(emb, labels)
    for k in KS:
        assert ours[f"class-avg Recall@{k}"] == pytest.approx(100 * pml[f"recall_at_{k}"], abs=1e-9)
        assert ours[f"Recall@{k}"] == pytest.approx(100 * plain[f"recall_at_{k}"], abs=1e-9)
    assert ours["class-avg Recall@1"] == pytest.approx(100 * pml["precision_at_1"], abs=1e-9)
    assert ours["class-avg MAP@R"] == pytest.approx(100 * pml["mean_average_precision_at_r"], abs=1e-9)
    assert ours["MAP@R"] == pytest.approx(100 * plain["mean_average_precision_at_r"], abs=1e-9)
    # uneven classes: the class average is not the query average
    assert abs(ours["class-avg MAP@R"] - ours["MAP@R"]) > 0.1


def test_class_averages_equal_pml_query_to_gallery():
    emb, labels = _uneven(30, 2)
    g = torch.Generator().manual_seed(3)
    gallery = emb + 0.8 * torch.randn(emb.shape, generator=g)
    ours = retrieval_metrics(emb, labels, gallery, labels, KS, ("recall", "map_r", "per_class"))
    pml = _pml(emb, labels, gallery, labels, avg_of_avgs=True)
    for k in KS:
        assert ours[f"class-avg Recall@{k}"] == pytest.approx(100 * pml[f"recall_at_{k}"], abs=1e-9)
    assert ours["class-avg MAP@R"] == pytest.approx(100 * pml["mean_average_precision_at_r"], abs=1e-9)


def test_per_class_csv_equals_pml_return_per_class():
    emb, labels = _uneven(25, 4)
    rows = list(csv.DictReader(io.StringIO(per_class_csv(emb, labels, None, None, KS, map_r=True))))
    pml = _pml(emb, labels, return_per_class=True)  # per class in ascending label order
    assert [int(r["label"]) for r in rows] == sorted(set(labels.tolist()))
    assert [int(r["queries"]) for r in rows] == [int((labels == int(r["label"])).sum()) for r in rows]
    assert list(rows[0]) == ["label", "queries", "Recall@1", "Recall@2", "Recall@4", "MAP@R", "R-Precision"]
    for column, key in [("Recall@1", "precision_at_1"), ("Recall@4", "recall_at_4"),
                        ("MAP@R", "mean_average_precision_at_r"), ("R-Precision", "r_precision")]:
        assert [float(r[column]) for r in rows] == pytest.approx([100 * v for v in pml[key]], abs=1e-4)


def test_class_without_positives():
    """A class of one image has no positive: its Recall is a miss (counted), its MAP@R cell is empty, and it
    is left out of the class-averaged MAP@R."""
    emb = torch.tensor([[0.0], [0.1], [5.0], [5.2], [9.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    ours = retrieval_metrics(emb, labels, None, None, [1], ("recall", "map_r", "per_class"))
    assert ours["class-avg Recall@1"] == pytest.approx(200 / 3)
    assert ours["class-avg MAP@R"] == pytest.approx(100.0)
    text = per_class_csv(emb, labels, None, None, [1], map_r=True)
    assert text.splitlines()[-1] == "2,1,0.0000,,"
    outcome = per_query_metrics(emb, labels, None, None, [1], map_r=True)
    assert outcome.positives.tolist() == [1, 1, 1, 1, 0] and outcome.ap.tolist() == [1, 1, 1, 1, 0]


def test_per_class_csv_without_map_r_has_recall_columns_only():
    emb, labels = _uneven(5, 5)
    header = per_class_csv(emb, labels, None, None, [1, 10], map_r=False).splitlines()[0]
    assert header == "label,queries,Recall@1,Recall@10"


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"), classes=6, per_class=5)


def test_training_run_writes_per_class_csv_of_its_last_evaluation(cub_root, tmp_path, capsys):
    save = tmp_path / "run"
    results = run_main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "2", "--recall", "1",
                                "2", "--metrics", "recall", "map_r", "--per-class", "--save-embeddings"])
    assert {"class-avg Recall@1", "class-avg Recall@2", "class-avg MAP@R"} <= set(results)
    assert "class-avg MAP@R: [" in capsys.readouterr().out
    last = json.loads((save / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epoch"] == 2 and last["class-avg Recall@1"] == results["class-avg Recall@1"]
    test = torch.load(save / "embeddings.pt", weights_only=True)["test"]  # the last evaluation's embeddings
    text = (save / "per_class.csv").read_text()
    assert text == per_class_csv(test["embeddings"], test["labels"], None, None, [1, 2], map_r=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3 and sum(int(r["queries"]) for r in rows) == 15  # the 3 test classes of 5 images
    assert sum(float(r["Recall@1"]) for r in rows) / 3 == pytest.approx(results["class-avg Recall@1"], abs=1e-3)


def test_eval_mode_writes_per_class_csv_in_save_dir(cub_root, tmp_path):
    """--mode eval with the default backbone (BN-Inception at 64 px): per_class.csv lands in --save-dir."""
    out = tmp_path / "eval"
    results = run_main(["--mode", "eval", "--no-pretrained", "--image-size", "64", "--device", "cpu", "--workers",
                        "0", "--eval-batch", "16", "--data", str(cub_root), "--save-dir", str(out), "--recall", "1",
                        "4", "--per-class"])
    rows = list(csv.DictReader(io.StringIO((out / "per_class.csv").read_text())))
    assert list(rows[0]) == ["label", "queries", "Recall@1", "Recall@4"]
    assert sum(float(r["Recall@4"]) for r in rows) / len(rows) == pytest.approx(results["class-avg Recall@4"],
                                                                              abs=1e-3)
    assert "class-avg MAP@R" not in results  # map_r was not asked for
