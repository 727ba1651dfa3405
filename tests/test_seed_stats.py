"""Issue 25, section 3: confidence intervals over seeds and paired comparisons with a baseline, in the report."""
import csv
import io
import math

import pytest
from scipy import stats

from fake_runs import curve, fake_run
from tools import report, seed_stats


def test_the_interval_is_student_t_s_and_equals_scipy_s():
    values = [70.0, 72.5, 75.0]
    summary = seed_stats.summarize(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=72.5, scale=stats.sem(values))
    assert summary.ci == pytest.approx((low, high), abs=1e-12)
    assert summary.ci == pytest.approx((66.28966, 78.71034), abs=1e-5)  # 72.5 ± 4.302653 · 2.5 / √3
    assert (summary.mean, summary.std, summary.n) == (72.5, 2.5, 3)
    assert seed_stats.summarize([40.0]) == seed_stats.Summary(40.0, 0.0, None, 1)


def test_the_paired_p_value_is_scipy_s_over_the_common_seeds():
    mine = {1: 71.0, 2: 73.5, 3: 74.0, 4: 99.0}
    base = {1: 70.0, 2: 72.0, 3: 73.5, 5: 10.0}
    comparison = seed_stats.paired(mine, base)
    assert comparison.n == 3 and comparison.delta == pytest.approx(1.0)
    assert comparison.p == pytest.approx(stats.ttest_rel([71.0, 73.5, 74.0], [70.0, 72.0, 73.5]).pvalue, abs=1e-12)
    assert comparison.p == pytest.approx(0.07418, abs=1e-5)  # t = 1 / (0.5 / √3) on 2 degrees of freedom
    two = seed_stats.paired({1: 71.0, 2: 73.5}, {1: 70.0, 2: 72.0})
    assert two.p is None and two.delta == pytest.approx(1.25)
    assert seed_stats.paired({1: 1.0, 2: 2.0, 3: 3.0}, {1: 1.0, 2: 2.0, 3: 3.0}).p is None
    assert seed_stats.paired({1: 1.0}, {2: 1.0}) is None


MDR = [41.0, 44.0, 46.0, 45.0]
TRIPLET = [40.0, 42.0, 43.5]
L2NORM = [39.0, 44.0]


@pytest.fixture
def runs(tmp_path):
    """Finished runs of 1 epoch: Triplet on seeds 1-3, Triplet+MDR on 1-4, Triplet+L2Norm on 1-2 (Recall@1 at
    epoch 1 as listed, epoch 0 at 5)."""
    for name, values, flags in (("triplet", TRIPLET, {}), ("mdr", MDR, {"lambda_mdr": 0.6, "nu_mdr": 0.01}),
                                ("l2norm", L2NORM, {"l2norm": True})):
        for seed, value in enumerate(values, start=1):
            fake_run(tmp_path / name / f"seed{seed}", curve(5.0, value), seed=seed, **flags)
    return tmp_path


def test_report_csv_has_the_interval_and_the_comparison_columns(runs, capsys):
    assert report.main([str(runs), "--format", "csv", "--baseline", "triplet"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split(",")
    metric_columns = [f"Recall@{k} {s}" for k in (1, 2) for s in ("mean", "std", "ci_low", "ci_high", "delta", "p")]
    assert header == ["dataset", "method", "grid", "selection", "seeds"] + metric_columns
    table = {(r["method"], r["selection"]): r for r in csv.DictReader(io.StringIO(out))}
    mdr = table["Triplet+MDR", "final epoch"]
    assert mdr["grid"] == "" and mdr["seeds"] == "4"
    low, high = stats.t.interval(0.95, 3, loc=sum(MDR) / 4, scale=stats.sem(MDR))
    assert float(mdr["Recall@1 ci_low"]) == pytest.approx(low, abs=1e-4)
    assert float(mdr["Recall@2 ci_high"]) == pytest.approx(high + 10, abs=1e-4)
    paired = stats.ttest_rel(MDR[:3], TRIPLET)
    assert float(mdr["Recall@1 delta"]) == pytest.approx(sum(MDR[:3]) / 3 - sum(TRIPLET) / 3, abs=1e-4)
    assert float(mdr["Recall@1 p"]) == pytest.approx(paired.pvalue, rel=1e-3)
    l2norm = table["Triplet+L2Norm", "final epoch"]
    assert l2norm["Recall@1 p"] == "n/a" and float(l2norm["Recall@1 delta"]) == pytest.approx(0.5, abs=1e-4)
    baseline = table["Triplet", "final epoch"]
    assert baseline["Recall@1 delta"] == baseline["Recall@1 p"] == ""


def test_markdown_and_latex_show_the_interval_and_the_comparison(runs, capsys):
    assert report.main([str(runs), "--baseline", "Triplet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Dataset | Method | Selection | n | Recall@1 | Recall@2 |"
    low, high = stats.t.interval(0.95, 2, loc=sum(TRIPLET) / 3, scale=stats.sem(TRIPLET))
    std = stats.tstd(TRIPLET)
    triplet = next(line for line in lines if "| Triplet | final epoch |" in line)
    assert f"| {sum(TRIPLET) / 3:.2f} ± {std:.2f} [{low:.2f}, {high:.2f}], baseline |" in triplet
    p = stats.ttest_rel(MDR[:3], TRIPLET).pvalue
    mdr = next(line for line in lines if "| Triplet+MDR | final epoch |" in line)
    assert f", Δ +{sum(MDR[:3]) / 3 - sum(TRIPLET) / 3:.2f} (p {p:.3g}, 3 seeds) |" in mdr
    assert "(p n/a, 2 seeds)" in next(line for line in lines if "| Triplet+L2Norm | final epoch |" in line)
    assert report.main([str(runs), "--format", "latex", "--baseline", "triplet"]) == 0
    latex = capsys.readouterr().out
    assert rf"$\pm$ {std:.2f} [{low:.2f}, {high:.2f}], baseline" in latex and r"$\Delta$ +" in latex


def test_an_unknown_baseline_is_one_line(runs, capsys):
    assert report.main([str(runs), "--baseline", "ProxyAnchor"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Triplet, Triplet+L2Norm, Triplet+MDR" in err


def test_one_seed_has_no_interval(tmp_path, capsys):
    fake_run(tmp_path / "seed1", curve(5.0, 40.0))
    assert report.main([str(tmp_path), "--format", "csv"]) == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["Recall@1 ci_low"] == row["Recall@1 ci_high"] == "" and math.isclose(float(row["Recall@1 mean"]), 40)
