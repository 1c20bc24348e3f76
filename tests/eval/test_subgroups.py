"""Subgroup metrics against a hand computation, plus gap flagging and the bootstrap design."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medft._io import write_json
from medft.errors import ConfigError, DataError
from medft.eval.metrics import bootstrap_counts, patient_codes
from medft.eval.subgroups import gap_warnings, subgroup_metrics


def _hand_table() -> pd.DataFrame:
    rows = [
        # patient, Effusion, prob, sex, view
        ("p1", 1.0, 0.9, "F", "PA"),
        ("p1", 0.0, 0.5, "F", "AP"),  # p1 has a PA and an AP image
        ("p2", 1.0, 0.4, "F", "PA"),
        ("p3", 0.0, 0.1, "F", "PA"),
        ("p3", 0.0, 0.2, "F", "PA"),
        ("p4", 1.0, 0.8, "F", "AP"),
        ("p5", 1.0, 0.3, "M", "AP"),
        ("p5", 0.0, 0.6, "M", "AP"),
        ("p6", 1.0, 0.7, "M", "PA"),
        ("p7", 0.0, 0.2, "M", "PA"),
        ("p8", np.nan, 0.9, "M", "PA"),  # unknown label: dropped
    ]
    return pd.DataFrame(rows, columns=["patient_id", "Effusion", "prob_Effusion", "sex", "view"])


def _row(report, attribute: str, subgroup: str) -> pd.Series:
    t = report.table
    return t[(t.attribute == attribute) & (t.subgroup == subgroup)].iloc[0]


def test_subgroup_metrics_match_a_hand_computation() -> None:
    report = subgroup_metrics(
        _hand_table(), ["sex", "view"], ["Effusion"], thresholds={"Effusion": 0.5},
        n_boot=100, min_count=4,
    )  # fmt: skip
    f, m = _row(report, "sex", "F"), _row(report, "sex", "M")
    # F: positives .9 .4 .8, negatives .5 .1 .2 -> 8 of 9 pairs concordant.
    # At 0.5 (p >= t is positive): positives called .9 .8 -> 2/3; negatives below .1 .2 -> 2/3.
    assert (f.n_images, f.n_patients, f.n_positive, f.prevalence) == (6, 4, 3, 0.5)
    assert f.auroc == pytest.approx(8 / 9)
    assert (f.sensitivity, f.specificity) == pytest.approx((2 / 3, 2 / 3))
    # M (p8 unknown): positives .3 .7, negatives .6 .2 -> 3 of 4 pairs; sens 1/2, spec 1/2.
    assert (m.n_images, m.n_patients, m.n_positive) == (4, 3, 2)
    assert m.auroc == pytest.approx(3 / 4)
    assert (m.sensitivity, m.specificity) == pytest.approx((0.5, 0.5))
    # PA: positives .9 .4 .7 above negatives .1 .2 .2 -> 1. AP: .8 beats .5 .6; .3 beats none.
    pa, ap = _row(report, "view", "PA"), _row(report, "view", "AP")
    assert (pa.auroc, pa.n_images, pa.n_patients) == (1.0, 6, 5)
    assert (ap.auroc, ap.n_images, ap.n_patients) == (0.5, 4, 3)
    gaps = report.gaps.set_index("attribute")
    assert gaps.loc["sex", "auroc_gap"] == pytest.approx(8 / 9 - 3 / 4)
    assert gaps.loc["sex", "worst_subgroup"] == "M"
    assert gaps.loc["view", "auroc_gap"] == pytest.approx(0.5)
    assert (gaps.loc["view", "best_subgroup"], gaps.loc["view", "worst_subgroup"]) == ("PA", "AP")
    assert gaps["largest"].tolist() == [True, False]  # view first: the largest gap
    assert report.table["threshold"].eq(0.5).all()


def test_small_subgroups_are_reported_but_not_flagged() -> None:
    report = subgroup_metrics(_hand_table(), ["sex", "view"], ["Effusion"], n_boot=20, min_count=5)
    assert len(report.table) == 4
    small = report.table[~report.table.eligible]
    assert sorted(small.subgroup) == ["AP", "M"]
    assert small.note.str.contains("fewer than 5").all()
    assert report.gaps.empty
    assert report.to_dict()["largest_gap"] is None


def test_one_class_subgroup_is_nan_with_a_note_and_missing_values_form_a_subgroup() -> None:
    table = _hand_table()
    table["site"] = ["A"] * 4 + [None] * 4 + ["B"] * 3
    report = subgroup_metrics(table, ["site"], ["Effusion"], n_boot=20, min_count=1)
    assert set(report.table.subgroup) == {"A", "B", "missing"}
    b = _row(report, "site", "B")
    assert b.n_images == 2 and not math.isnan(b.auroc)
    one_class = subgroup_metrics(table.iloc[[0, 2]], ["sex"], ["Effusion"], n_boot=10, min_count=1)
    f = _row(one_class, "sex", "F")
    assert math.isnan(f.auroc) and "no" in f.note and not f.eligible


def test_intervals_resample_patients_over_the_whole_table() -> None:
    """Recompute subgroup F's AUROC interval by explicit resampling with scikit-learn."""
    table = _hand_table()
    n_boot, seed = 200, 3
    report = subgroup_metrics(table, ["sex"], ["Effusion"], n_boot=n_boot, seed=seed, min_count=4)
    codes, n_groups = patient_codes(table.patient_id.to_numpy(), len(table))
    counts = bootstrap_counts(n_groups, n=n_boot, seed=seed)
    in_f = (table.sex == "F").to_numpy() & table.Effusion.notna().to_numpy()
    y, p = table.Effusion.to_numpy(), table.prob_Effusion.to_numpy()
    values = []
    for b in range(n_boot):
        take = np.repeat(np.arange(len(table)), counts[b][codes])
        take = take[in_f[take]]
        if len(set(y[take])) == 2:
            values.append(roc_auc_score(y[take], p[take]))
    low, high = np.quantile(values, [0.025, 0.975])
    f = _row(report, "sex", "F")
    assert (f.auroc_ci_low, f.auroc_ci_high) == pytest.approx((low, high), abs=1e-12)


def _synthetic(rng: np.random.Generator, n_patients: int, gap: bool) -> pd.DataFrame:
    pid = np.repeat(np.arange(n_patients), 2)
    site = np.where(pid % 2 == 0, "north", "south")
    y = (rng.random(pid.size) < 0.4).astype(float)
    noise = np.where((site == "south") & gap, 2.5, 0.7)
    score = y + rng.normal(0, 1, pid.size) * noise
    return pd.DataFrame(
        {
            "patient_id": [f"id{i}" for i in pid],
            "site": site,
            "Effusion": y,
            "prob_Effusion": 1 / (1 + np.exp(-score)),
        }
    )


def test_planted_gap_has_an_interval_above_zero_and_no_gap_covers_zero() -> None:
    rng = np.random.default_rng(0)
    planted = subgroup_metrics(_synthetic(rng, 400, gap=True), ["site"], ["Effusion"], n_boot=200)
    g = planted.gaps.iloc[0]
    assert g.worst_subgroup == "south" and g.gap_ci_low > 0.1
    none = subgroup_metrics(_synthetic(rng, 400, gap=False), ["site"], ["Effusion"], n_boot=200)
    g0 = none.gaps.iloc[0]
    assert g0.gap_ci_low < 0 < g0.gap_ci_high


def test_report_is_deterministic_and_json_ready(tmp_path) -> None:
    table = _hand_table()
    a = subgroup_metrics(table, ["sex", "view"], ["Effusion"], n_boot=50, seed=1, min_count=4)
    b = subgroup_metrics(table, ["sex", "view"], ["Effusion"], n_boot=50, seed=1, min_count=4)
    pd.testing.assert_frame_equal(a.table, b.table)
    out = json.loads(write_json(tmp_path / "sub.json", a.to_dict()).read_text())
    f = out["by"]["sex"]["Effusion"]["F"]
    assert f["n_images"] == 6 and f["auroc"]["value"] == pytest.approx(8 / 9)
    assert set(f["sensitivity"]) == {"value", "ci_low", "ci_high"}
    assert out["largest_gap"]["attribute"] == "view"


def test_missing_columns_and_empty_by_raise() -> None:
    table = _hand_table()
    with pytest.raises(DataError, match="manufacturer"):
        subgroup_metrics(table, ["manufacturer"], ["Effusion"], n_boot=0)
    with pytest.raises(DataError, match="prob_Nodule"):
        subgroup_metrics(table, ["sex"], ["Nodule"], n_boot=0)
    with pytest.raises(ConfigError, match="at least one column"):
        subgroup_metrics(table, [], ["Effusion"], n_boot=0)
    custom = table.rename(columns={"prob_Effusion": "Effusion_p"})
    ok = subgroup_metrics(custom, ["sex"], ["Effusion"], prob_column="{label}_p", n_boot=0)
    assert math.isnan(ok.table.auroc_ci_low.iloc[0]) and ok.table.auroc.iloc[0] > 0


def test_gap_warnings_name_every_gap_whose_interval_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    planted = subgroup_metrics(_synthetic(rng, 400, gap=True), ["site"], ["Effusion"], n_boot=200)
    (warning,) = gap_warnings(planted.to_dict())
    assert "'Effusion'" in warning and "site=" in warning and "'south'" in warning
    none = subgroup_metrics(_synthetic(rng, 400, gap=False), ["site"], ["Effusion"], n_boot=200)
    assert gap_warnings(none.to_dict()) == []
    assert gap_warnings(None) == []
