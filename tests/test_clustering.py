"""k-means NMI and AMI against scikit-learn (installed with pytorch-metric-learning from requirements-extra.txt,
which CI installs), on data shaped like trained embeddings (``bench.synthetic.trained_like``)."""
import statistics

import pytest
import torch
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from bench.synthetic import trained_like
from errors import UserError
from metric.kmeans import kmeans, lloyd
from metric.nmi import adjusted_mutual_info, clustering_metrics, nmi, normalized_mutual_info
from metric.tile_scan import mean64

SIZE = (2000, 100, 512)  # images, classes, dimensions
# scikit-learn's NMI at SIZE -> trained_like's noise: the difficulties of trained CUB (60-75) and SOP (88)
# embeddings; the well-separated ~98 (noise 0.6: 0.12 points apart over these seeds) is bench/nmi_speed.py's
NOISE = {88: 1.5, 75: 1.95, 60: 2.5}
SEEDS = range(5)  # the means' differences over 5 seeds: 0.48, -0.17 and -0.03 points


def _centred(x):
    return (x - mean64(x).float()).contiguous()


def test_lloyd_from_scikit_learns_start_gives_its_labels():
    """Lloyd's iterations, bounds and stopping rule are scikit-learn's: from its k-means++ centroids, its labels,
    at four difficulties."""
    iterations = []
    for noise in (0.5, 1.0, 1.5, 2.0):
        x, _ = trained_like(1500, 60, 64, noise, seed=1)
        x = _centred(x)
        start, _ = kmeans_plusplus(x.numpy(), 60, random_state=0)
        theirs = KMeans(60, init=start, n_init=1).fit(x.numpy())
        assert torch.equal(lloyd(x, torch.from_numpy(start).clone()), torch.from_numpy(theirs.labels_).long())
        iterations.append(theirs.n_iter_)
    assert max(iterations) > 10  # beyond the old cap of 10 iterations


def test_an_empty_cluster_takes_the_farthest_point_as_scikit_learn():
    x, _ = trained_like(400, 20, 16, 1.0, seed=2)
    x = _centred(x)
    start, _ = kmeans_plusplus(x.numpy(), 20, random_state=0)
    start[3] = 50.0  # far from every point: empty after the first assignment
    theirs = KMeans(20, init=start, n_init=1).fit(x.numpy())
    ours = lloyd(x, torch.from_numpy(start).clone())
    assert torch.equal(ours, torch.from_numpy(theirs.labels_).long())
    assert (ours == 3).any()  # the relocated centroid holds points


@pytest.mark.parametrize("target", sorted(NOISE))
def test_nmi_within_one_point_of_scikit_learn_across_difficulty(target):
    """Mean NMI over seeds of the whole k-means (seeding included) within 1 point of scikit-learn
    KMeans(n_clusters=k, n_init=1)'s, at NMI about 60, 75 and 88 (one run's spread is about 1 point)."""
    n, k, dim = SIZE
    x, labels = trained_like(n, k, dim, NOISE[target])
    theirs = [100 * normalized_mutual_info_score(labels.numpy(), KMeans(k, n_init=1, random_state=s).fit_predict(
        x.numpy())) for s in SEEDS]
    ours = [nmi(x, labels, seed=s) for s in SEEDS]
    assert abs(statistics.mean(theirs) - target) < 3  # the difficulty is the intended one
    assert abs(statistics.mean(ours) - statistics.mean(theirs)) < 1.0


def test_nmi_is_deterministic_for_a_seed():
    x, labels = trained_like(800, 40, 64, 1.0)
    assert torch.equal(kmeans(x, 40, seed=3), kmeans(x, 40, seed=3))
    assert not torch.equal(kmeans(x, 40, seed=3), kmeans(x, 40, seed=4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ami_and_nmi_equal_scikit_learns_on_labelings(seed):
    g = torch.Generator().manual_seed(seed)
    for n, ka, kb in [(200, 7, 5), (1000, 120, 100), (60, 60, 3), (30, 2, 2)]:
        a, b = torch.randint(0, ka, (n,), generator=g), torch.randint(0, kb, (n,), generator=g)
        b[:n // 2] = a[:n // 2]
        assert adjusted_mutual_info(a, b) == pytest.approx(adjusted_mutual_info_score(a.numpy(), b.numpy()),
                                                           abs=1e-10)
        assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a.numpy(), b.numpy()),
                                                             abs=1e-12)


def test_ami_limit_cases_as_scikit_learn():
    one, two = torch.zeros(5, dtype=torch.long), torch.tensor([0, 0, 1, 1, 1])
    for a, b in [(one, one), (one, two), (two, one), (two, two), (torch.arange(5), torch.arange(5))]:
        assert adjusted_mutual_info(a, b) == pytest.approx(adjusted_mutual_info_score(a.numpy(), b.numpy()))


def test_ami_of_the_clustering_equals_scikit_learns_on_the_same_clustering():
    x, labels = trained_like(1000, 50, 64, 1.2)
    scores = clustering_metrics(x, labels, ("nmi", "ami"), seed=2)
    assign = kmeans(x, 50, seed=2).numpy()
    assert scores["AMI"] == pytest.approx(100 * adjusted_mutual_info_score(labels.numpy(), assign), abs=1e-9)
    assert scores["NMI"] == pytest.approx(100 * normalized_mutual_info_score(labels.numpy(), assign), abs=1e-9)
    assert scores["AMI"] < scores["NMI"] - 5  # chance-corrected: many small classes lift NMI, not AMI
    assert set(clustering_metrics(x, labels, ("ami",))) == {"AMI"}


@pytest.mark.parametrize("embeddings, labels, message", [
    (torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long), "4 of 4 embeddings are NaN or infinite"),
    (torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [1.0, 1.0]]), torch.tensor([0, 1, 1]), "1 of 3 embeddings"),
    (torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), "no embeddings"),
    (torch.randn(5, 8), torch.zeros(4, dtype=torch.long), "shape (5, 8) and (4,) labels"),
    (torch.randn(5), torch.zeros(5, dtype=torch.long), "shape (5,)"),
])
def test_nmi_refuses_what_it_cannot_score_in_one_line(embeddings, labels, message):
    """NaN embeddings gave NMI 0.0, empty or mismatched inputs a raw error; now one line each (issue 22.21)."""
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        nmi(embeddings, labels)
    assert "\n" not in str(raised.value)


def test_eval_reports_ami_of_the_same_clustering_as_nmi(tmp_path):
    """--metrics nmi ami: both from one k-means of the test embeddings, AMI equal to scikit-learn's on it."""
    from minidata import make_cub
    from small_run import SMALL, run_main
    root = make_cub(tmp_path / "data", classes=6, per_class=5)
    results = run_main(SMALL + ["--mode", "eval", "--data", str(root), "--metrics", "recall", "nmi", "ami",
                                "--save-embeddings", "--save-dir", str(tmp_path / "eval")])
    test = torch.load(tmp_path / "eval" / "embeddings.pt", weights_only=True)["test"]
    assign = kmeans(test["embeddings"], 3, seed=0).numpy()
    assert results["AMI"] == pytest.approx(100 * adjusted_mutual_info_score(test["labels"].numpy(), assign), abs=1e-9)
    assert results["NMI"] == pytest.approx(100 * normalized_mutual_info_score(test["labels"].numpy(), assign),
                                           abs=1e-9)
