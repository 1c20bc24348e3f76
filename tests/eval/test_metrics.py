"""Discrimination metrics and patient-level bootstrap, checked against scikit-learn."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from medft._io import write_json
from medft.errors import ConfigError, DataError
from medft.eval import metrics as M


def _random_case(rng: np.random.Generator, n: int, *, ties: bool, nan_frac: float = 0.0):
    y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
    p = rng.random(n)
    if ties:
        p = np.round(p, 1)
    y[rng.random(n) < nan_frac] = np.nan
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    known = y[~np.isnan(y)]
    return bool(known.size) and 0 < known.sum() < known.size


# --------------------------------------------------------------------------- point metrics


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_ap_match_sklearn_on_random_inputs(ties: bool) -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        y, p = _random_case(rng, int(rng.integers(5, 300)), ties=ties, nan_frac=0.2)
        known = ~np.isnan(y)
        if not _both_classes(y):
            continue
        assert M.auroc(y, p) == pytest.approx(roc_auc_score(y[known], p[known]), abs=1e-12)
        assert M.average_precision(y, p) == pytest.approx(
            average_precision_score(y[known], p[known]), abs=1e-12
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 1.0, math.nan]), st.integers(0, 6)),
        min_size=1,
        max_size=40,
    )
)
def test_auroc_and_ap_match_sklearn_property(rows: list[tuple[float, int]]) -> None:
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] / 6 for r in rows])  # few distinct scores: many ties
    known = ~np.isnan(y)
    if _both_classes(y):
        assert M.auroc(y, p) == pytest.approx(roc_auc_score(y[known], p[known]), abs=1e-12)
        assert M.average_precision(y, p) == pytest.approx(
            average_precision_score(y[known], p[known]), abs=1e-12
        )
    else:
        assert math.isnan(M.auroc(y, p))
        assert math.isnan(M.average_precision(y, p))
        assert M.undefined_reason(y) is not None


def test_one_class_is_nan_with_a_reason_not_an_error() -> None:
    assert math.isnan(M.auroc([1, 1, np.nan], [0.2, 0.3, 0.4]))
    assert math.isnan(M.average_precision([0, 0], [0.2, 0.3]))
    assert math.isnan(M.auroc([], []))
    assert M.undefined_reason([1, 1, np.nan]) == "no negative images among 2 with a known label"
    assert M.undefined_reason([0, 0]) == "no positive images among 2 with a known label"
    assert M.undefined_reason([np.nan]) == "no images with a known label"
    assert M.undefined_reason([0, 1]) is None


def test_threshold_metrics_match_confusion_matrix() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        y, p = _random_case(rng, 80, ties=True, nan_frac=0.1)
        t = float(rng.choice([0.3, 0.5, 0.7]))
        known = ~np.isnan(y)
        tn, fp, fn, tp = confusion_matrix(y[known], p[known] >= t, labels=[0, 1]).ravel()
        got = M.threshold_metrics(y, p, t)
        assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
        assert got["n"] == known.sum()
        assert got["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert got["specificity"] == pytest.approx(tn / (tn + fp))
        assert got["accuracy"] == pytest.approx((tp + tn) / known.sum())
        if tp + fp:
            assert got["ppv"] == pytest.approx(tp / (tp + fp))
            assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        if tn + fn:
            assert got["npv"] == pytest.approx(tn / (tn + fn))


def test_threshold_metrics_edge_cases() -> None:
    # p >= threshold is positive; a rate with an empty denominator is NaN.
    got = M.threshold_metrics([1, 0, 1], [0.5, 0.2, 0.9], 0.5)
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (2, 0, 1, 0)
    nothing_called = M.threshold_metrics([1, 0], [0.1, 0.2], 0.9)
    assert math.isnan(nothing_called["ppv"])
    no_positives = M.threshold_metrics([0, 0], [0.1, 0.2], 0.5)
    assert math.isnan(no_positives["sensitivity"])
    assert no_positives["specificity"] == 1.0


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 2, 1], [0.1, 0.2, 0.3], "label 2.0 at row 1"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "prediction at row 1"),
        ([0, 1], [0.1, 0.2, 0.3], "differ in length"),
    ],
)
def test_bad_inputs_raise_data_errors(y, p, message) -> None:
    with pytest.raises(DataError, match=message):
        M.auroc(y, p)


def test_nan_prediction_is_fine_where_the_label_is_unknown() -> None:
    assert M.auroc([0, 1, np.nan], [0.1, 0.9, np.nan]) == 1.0


# --------------------------------------------------------------------------- weighted kernels


def test_weighted_kernels_equal_metrics_on_explicitly_resampled_rows() -> None:
    """Frequency weights are exactly resampling with duplicates."""
    rng = np.random.default_rng(2)
    y, p = _random_case(rng, 60, ties=True)
    w = rng.integers(0, 4, size=(25, y.size)).astype(float)
    got_auc = M.auroc_weighted(y, p, w)
    got_ap = M.average_precision_weighted(y, p, w)
    got_sens = M.rate_weighted("sensitivity", 0.5)(y, p, w)
    for b in range(w.shape[0]):
        take = np.repeat(np.arange(y.size), w[b].astype(int))
        if _both_classes(y[take]):
            assert got_auc[b] == pytest.approx(roc_auc_score(y[take], p[take]), abs=1e-12)
            assert got_ap[b] == pytest.approx(average_precision_score(y[take], p[take]), abs=1e-12)
        else:
            assert math.isnan(got_auc[b])
        pos = y[take] == 1
        if pos.any():
            assert got_sens[b] == pytest.approx(np.mean(p[take][pos] >= 0.5))


def test_fast_resamplers_agree_with_generic_kernels() -> None:
    rng = np.random.default_rng(3)
    y, p = _random_case(rng, 300, ties=True)
    groups = rng.integers(0, 90, y.size)
    codes, n_groups = M.patient_codes(groups, y.size)
    counts = M.bootstrap_counts(n_groups, n=50, seed=1)
    generic = M.resample_metrics(
        y,
        p,
        codes,
        counts,
        {
            "auroc": M.auroc_weighted,
            "average_precision": M.average_precision_weighted,
            **{r: M.rate_weighted(r, 0.4) for r in M.RATE_NAMES},
        },
    )
    fast = {
        **M.resample_ranking(y, p, codes, counts),
        **M.resample_confusion(y, p, 0.4, codes, counts),
    }
    for name, values in generic.items():
        np.testing.assert_allclose(fast[name], values, rtol=0, atol=1e-12, err_msg=name)


def test_bootstrap_counts_draw_every_patient_count_and_are_seeded() -> None:
    counts = M.bootstrap_counts(37, n=200, seed=5)
    assert counts.shape == (200, 37)
    assert (counts.sum(axis=1) == 37).all()
    np.testing.assert_array_equal(counts, M.bootstrap_counts(37, n=200, seed=5))
    assert not np.array_equal(counts, M.bootstrap_counts(37, n=200, seed=6))
    # Each patient is drawn once per resample on average.
    assert counts.mean() == pytest.approx(1.0)
    # The first resamples do not depend on how many are drawn.
    np.testing.assert_array_equal(counts[:70], M.bootstrap_counts(37, n=70, seed=5))


# --------------------------------------------------------------------------- cluster bootstrap


def test_perfectly_separable_data_has_value_one_and_ci_one() -> None:
    y = np.r_[np.zeros(40), np.ones(40)]
    p = np.r_[np.linspace(0.0, 0.4, 40), np.linspace(0.6, 1.0, 40)]
    groups = np.arange(80) // 2
    ci = M.cluster_bootstrap(y, p, groups, M.auroc, n=300, seed=0)
    assert (ci.value, ci.ci_low, ci.ci_high) == (1.0, 1.0, 1.0)
    assert ci.n_boot_valid == 300


def test_random_predictor_ci_covers_half_and_is_narrow() -> None:
    rng = np.random.default_rng(4)
    n = 4000
    y = (rng.random(n) < 0.4).astype(float)
    p = rng.random(n)
    groups = np.arange(n) // 2
    ci = M.cluster_bootstrap(y, p, groups, M.auroc, n=500, seed=0)
    assert ci.ci_low < 0.5 < ci.ci_high
    assert ci.ci_high - ci.ci_low < 0.07
    assert ci.ci_low < ci.value < ci.ci_high


def test_cluster_bootstrap_resamples_patients_not_images() -> None:
    """Duplicating each patient's image 5 times must not shrink the patient-level CI."""
    rng = np.random.default_rng(5)
    n_patients = 200
    y = (rng.random(n_patients) < 0.5).astype(float)
    p = np.clip(0.25 * y + rng.random(n_patients) * 0.75, 0, 1)
    y5, p5 = np.repeat(y, 5), np.repeat(p, 5)
    patients = np.repeat(np.arange(n_patients), 5)
    one_each = M.cluster_bootstrap(y, p, np.arange(n_patients), M.auroc, n=400, seed=0)
    clustered = M.cluster_bootstrap(y5, p5, patients, M.auroc, n=400, seed=0)
    image_level = M.cluster_bootstrap(y5, p5, None, M.auroc, n=400, seed=0)
    width = {
        k: c.ci_high - c.ci_low
        for k, c in [("one", one_each), ("cl", clustered), ("img", image_level)]
    }
    # Resampling patients: the duplicated data carry no extra information, same CI.
    assert (clustered.ci_low, clustered.ci_high) == pytest.approx(
        (one_each.ci_low, one_each.ci_high), abs=1e-12
    )
    # Resampling images pretends to 5x the data: about sqrt(5) narrower.
    assert width["cl"] > 1.8 * width["img"]


def test_cluster_bootstrap_is_seeded_and_row_order_free() -> None:
    rng = np.random.default_rng(6)
    y, p = _random_case(rng, 500, ties=False, nan_frac=0.1)
    groups = np.array([f"pt{i}" for i in rng.integers(0, 150, y.size)])
    a = M.cluster_bootstrap(y, p, groups, M.auroc, n=200, seed=3)
    assert a == M.cluster_bootstrap(y, p, groups, M.auroc, n=200, seed=3)
    assert a != M.cluster_bootstrap(y, p, groups, M.auroc, n=200, seed=4)
    perm = rng.permutation(y.size)
    shuffled = M.cluster_bootstrap(y[perm], p[perm], groups[perm], M.auroc, n=200, seed=3)
    assert shuffled.value == pytest.approx(a.value, abs=1e-12)
    assert (shuffled.ci_low, shuffled.ci_high) == pytest.approx((a.ci_low, a.ci_high), abs=1e-12)


def test_any_callable_gives_the_same_interval_as_the_vectorised_path() -> None:
    rng = np.random.default_rng(7)
    y, p = _random_case(rng, 150, ties=True)
    groups = rng.integers(0, 40, y.size)

    def sk_auroc(yy: np.ndarray, pp: np.ndarray) -> float:
        return roc_auc_score(yy, pp) if 0 < yy.sum() < yy.size else math.nan

    fast = M.cluster_bootstrap(y, p, groups, M.auroc, n=100, seed=2)
    slow = M.cluster_bootstrap(y, p, groups, sk_auroc, n=100, seed=2)
    assert fast.n_boot_valid == slow.n_boot_valid
    assert (fast.value, fast.ci_low, fast.ci_high) == pytest.approx(
        (slow.value, slow.ci_low, slow.ci_high), abs=1e-12
    )
    rate = M.cluster_bootstrap(y, p, groups, M.rate_at("specificity", 0.5), n=100, seed=2)
    assert rate.value == M.threshold_metrics(y, p, 0.5)["specificity"]


def test_rare_finding_drops_resamples_without_both_classes() -> None:
    y = np.r_[np.zeros(30), 1.0]
    p = np.r_[np.linspace(0, 0.5, 30), 0.9]
    ci = M.cluster_bootstrap(y, p, np.arange(31), M.auroc, n=200, seed=0)
    assert 0 < ci.n_boot_valid < 200  # about 1 - (30/31)^31, i.e. 64% valid
    assert ci.value == 1.0


def test_bootstrap_rejects_bad_settings_and_missing_patients() -> None:
    with pytest.raises(ConfigError, match="confidence level"):
        M.cluster_bootstrap([0, 1], [0.1, 0.2], None, M.auroc, ci=1.5)
    with pytest.raises(ConfigError, match=">= 0"):
        M.cluster_bootstrap([0, 1], [0.1, 0.2], None, M.auroc, n=-1)
    with pytest.raises(DataError, match="patient key missing at row 1"):
        M.cluster_bootstrap([0, 1], [0.1, 0.2], ["a", None], M.auroc)
    with pytest.raises(DataError, match="3 entries for 2 rows"):
        M.paired_bootstrap([0, 1], [0.1, 0.2], [0.2, 0.1], ["a", "b", "c"])
    no_interval = M.cluster_bootstrap([0, 1], [0.1, 0.2], None, M.auroc, n=0)
    assert no_interval.value == 1.0 and math.isnan(no_interval.ci_low)


def test_thousand_resamples_of_five_thousand_images_is_fast() -> None:
    rng = np.random.default_rng(8)
    y, p = _random_case(rng, 5000, ties=False)
    groups = rng.integers(0, 2000, y.size)
    start = time.process_time()
    M.cluster_bootstrap(y, p, groups, M.auroc, n=1000, seed=0)
    assert time.process_time() - start < 3.0


# --------------------------------------------------------------------------- summarize


def _multilabel(rng: np.random.Generator, n: int = 400):
    labels = ["Effusion", "Nodule", "Rare"]
    y = (rng.random((n, 3)) < [0.3, 0.2, 0.05]).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random((n, 3)), 0, 1)
    groups = np.array([f"p{i}" for i in rng.integers(0, n // 3, n)])
    return labels, y, p, groups


def test_summarize_structure_and_agreement_with_single_metrics(tmp_path) -> None:
    rng = np.random.default_rng(9)
    labels, y, p, groups = _multilabel(rng)
    s = M.summarize(y, p, labels, groups, thresholds={"Effusion": 0.4}, n_boot=200, seed=1)
    for key in ("auroc", "average_precision"):
        assert set(s[key]) == {"macro", "per_class"}
        assert set(s[key]["per_class"]) == set(labels)
        macro = s[key]["macro"]
        assert {"value", "ci_low", "ci_high"} <= set(macro)
        per = [s[key]["per_class"][k]["value"] for k in labels]
        assert macro["value"] == pytest.approx(np.mean(per))
        assert macro["ci_low"] <= macro["value"] <= macro["ci_high"]
    # With no unknown labels the per-class interval is exactly cluster_bootstrap's.
    single = M.cluster_bootstrap(y[:, 1], p[:, 1], groups, M.auroc, n=200, seed=1)
    assert s["auroc"]["per_class"]["Nodule"] == pytest.approx(single.to_dict())
    assert s["auroc"]["per_class"]["Effusion"]["value"] == pytest.approx(
        roc_auc_score(y[:, 0], p[:, 0])
    )
    op = s["at_operating_point"]["Effusion"]
    assert op["threshold"] == 0.4 and op["threshold_source"] == "given"
    ref = M.threshold_metrics(y[:, 0], p[:, 0], 0.4)
    assert op["sensitivity"]["value"] == ref["sensitivity"]
    assert op["sensitivity"]["ci_low"] <= ref["sensitivity"] <= op["sensitivity"]["ci_high"]
    assert op["tp"] == ref["tp"]
    assert s["at_operating_point"]["Nodule"]["threshold_source"] == "default"
    assert s["n_images"] == 400 and s["n_patients"] == len(set(groups))
    assert s["prevalence"]["Effusion"] == pytest.approx(y[:, 0].mean())
    assert set(s["calibration"]["Rare"]) >= {"ece", "brier"}
    assert s["bootstrap"]["unit"] == "patient"
    # JSON-ready through the project's atomic writer.
    out = write_json(tmp_path / "metrics.json", s)
    assert json.loads(out.read_text())["auroc"]["per_class"]["Nodule"]["value"] == pytest.approx(
        s["auroc"]["per_class"]["Nodule"]["value"]
    )


def test_summarize_handles_unknown_labels_and_undefined_findings(tmp_path) -> None:
    rng = np.random.default_rng(10)
    labels, y, p, groups = _multilabel(rng)
    y[rng.random(y.shape[0]) < 0.3, 0] = np.nan
    y[:, 2] = 0.0  # no positives at all
    s = M.summarize(y, p, labels, groups, n_boot=100, seed=0)
    known = ~np.isnan(y[:, 0])
    assert s["auroc"]["per_class"]["Effusion"]["value"] == pytest.approx(
        roc_auc_score(y[known, 0], p[known, 0])
    )
    assert s["counts"]["Effusion"]["n_known"] == known.sum()
    rare = s["auroc"]["per_class"]["Rare"]
    assert math.isnan(rare["value"]) and "no positive" in rare["note"]
    assert s["auroc"]["macro"]["labels"] == ["Effusion", "Nodule"]
    assert s["auroc"]["macro"]["value"] == pytest.approx(
        np.mean([s["auroc"]["per_class"][k]["value"] for k in ("Effusion", "Nodule")])
    )
    text = (write_json(tmp_path / "m.json", s)).read_text()
    assert json.loads(text)["auroc"]["per_class"]["Rare"]["value"] is None


def test_summarize_is_deterministic_and_validates_inputs() -> None:
    rng = np.random.default_rng(11)
    labels, y, p, groups = _multilabel(rng, 120)
    a = M.summarize(y, p, labels, groups, n_boot=50, seed=7)
    assert a == M.summarize(y, p, labels, groups, n_boot=50, seed=7)
    with pytest.raises(DataError, match="expected"):
        M.summarize(y[:, :2], p[:, :2], labels, groups, n_boot=10)
    with pytest.raises(ConfigError, match="unknown findings"):
        M.summarize(y, p, labels, groups, thresholds={"Cat": 0.5}, n_boot=10)


def test_macro_ci_is_bootstrapped_as_a_mean() -> None:
    """Two identical findings: the macro interval equals each finding's interval."""
    rng = np.random.default_rng(12)
    y1 = (rng.random(300) < 0.4).astype(float)
    p1 = np.clip(0.3 * y1 + 0.7 * rng.random(300), 0, 1)
    y = np.c_[y1, y1]
    p = np.c_[p1, p1]
    s = M.summarize(y, p, ["a", "b"], np.arange(300) // 3, n_boot=200, seed=0)
    a = s["auroc"]["per_class"]["a"]
    m = s["auroc"]["macro"]
    assert (m["ci_low"], m["ci_high"]) == pytest.approx((a["ci_low"], a["ci_high"]))


# --------------------------------------------------------------------------- patient level


def test_aggregate_by_patient_max_and_mean() -> None:
    y = np.array([[0, np.nan], [1, np.nan], [0, 0], [np.nan, np.nan]])
    p = np.array([[0.2, 0.1], [0.6, 0.3], [0.4, 0.5], [0.9, 0.7]])
    groups = ["b", "b", "a", "c"]
    got = M.aggregate_by_patient(y, p, groups, how="max")
    assert got.keys.tolist() == ["a", "b", "c"]
    assert got.n_images.tolist() == [1, 2, 1]
    np.testing.assert_array_equal(got.y, [[0, 0], [1, np.nan], [np.nan, np.nan]])
    np.testing.assert_allclose(got.p, [[0.4, 0.5], [0.6, 0.3], [0.9, 0.7]])
    mean = M.aggregate_by_patient(y[:, 0], p[:, 0], groups, how="mean")
    np.testing.assert_allclose(mean.p, [0.4, 0.4, 0.9])
    with pytest.raises(ConfigError, match="'median'"):
        M.aggregate_by_patient(y, p, groups, how="median")  # type: ignore[arg-type]


def test_aggregate_table_by_patient() -> None:
    import pandas as pd

    table = pd.DataFrame(
        {
            "patient_id": ["x", "x", "y"],
            "Effusion": [0.0, 1.0, 0.0],
            "prob_Effusion": [0.1, 0.7, 0.3],
        }
    )
    out = M.aggregate_table_by_patient(
        table, group_col="patient_id", label_cols=["Effusion"], prob_cols=["prob_Effusion"]
    )
    assert out.to_dict(orient="list") == {
        "patient_id": ["x", "y"],
        "Effusion": [1.0, 0.0],
        "prob_Effusion": [0.7, 0.3],
        "n_images": [2, 1],
    }
    with pytest.raises(DataError, match="lacks columns"):
        M.aggregate_table_by_patient(
            table, group_col="study", label_cols=["Effusion"], prob_cols=["prob_Effusion"]
        )


# --------------------------------------------------------------------------- paired tests


def _slow_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Textbook DeLong (1988) with the O(m n) kernel psi: (difference, variance)."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for s in (a, b):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = pos.sum(), neg.sum()
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    cov = s10 / m + s01 / n
    diff = v10[0].mean() - v10[1].mean()
    return diff, cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def test_delong_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(13)
    for _ in range(15):
        n = int(rng.integers(10, 120))
        y = (rng.random(n) < 0.4).astype(float)
        if not 2 <= y.sum() <= n - 2:
            continue
        a = np.round(0.4 * y + rng.random(n), 1)  # ties inside and across models
        b = np.round(0.2 * y + rng.random(n), 1)
        got = M.delong_test(y, a, b)
        diff, var = _slow_delong(y, a, b)
        assert got.difference == pytest.approx(diff, abs=1e-12)
        assert got.se == pytest.approx(math.sqrt(var), rel=1e-9)
        assert got.auc_a == pytest.approx(roc_auc_score(y, a))
        assert got.p_value == pytest.approx(2 * (1 - _phi(abs(diff) / math.sqrt(var))), rel=1e-6)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_delong_hand_computed_case() -> None:
    # Positives score (a) 0.9, 0.6; (b) 0.7, 0.2. Negatives (a) 0.5, 0.1; (b) 0.3, 0.4.
    # a: every pair concordant -> V10 = [1, 1], V01 = [1, 1], AUC 1.
    # b: 0.7 beats both -> 1; 0.2 beats none -> 0: V10 = [1, 0]; V01 = [0.5, 0.5]; AUC 0.5.
    # Var(diff) = var(V10_a - V10_b)/2 + var(V01_a - V01_b)/2 = var([0, 1])/2 + 0 = 0.25.
    y = [1, 1, 0, 0]
    got = M.delong_test(y, [0.9, 0.6, 0.5, 0.1], [0.7, 0.2, 0.3, 0.4])
    assert (got.auc_a, got.auc_b, got.difference) == (1.0, 0.5, 0.5)
    assert got.se == pytest.approx(0.5)
    assert got.z == pytest.approx(1.0)
    assert got.p_value == pytest.approx(0.3173105, abs=1e-6)


def test_delong_identical_models_and_undefined_cases() -> None:
    rng = np.random.default_rng(14)
    y = (rng.random(100) < 0.5).astype(float)
    p = rng.random(100)
    same = M.delong_test(y, p, p)
    assert same.difference == 0.0 and same.p_value == 1.0
    one_class = M.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    assert math.isnan(one_class.p_value)


def test_delong_se_agrees_with_the_paired_bootstrap() -> None:
    rng = np.random.default_rng(15)
    n = 1500
    y = (rng.random(n) < 0.4).astype(float)
    a = 0.8 * y + rng.normal(size=n)
    b = 0.6 * y + rng.normal(size=n) + 0.5 * a
    delong = M.delong_test(y, a, b)
    boot = M.paired_bootstrap(y, a, b, None, n=600, seed=0)
    boot_se = (boot.ci_high - boot.ci_low) / (2 * 1.96)
    assert boot.difference == pytest.approx(delong.difference)
    assert boot_se == pytest.approx(delong.se, rel=0.15)
    assert (boot.p_value < 0.05) == (delong.p_value < 0.05)


def test_paired_bootstrap_better_model_and_identical_models() -> None:
    rng = np.random.default_rng(16)
    n = 600
    y = (rng.random(n) < 0.5).astype(float)
    good = y + rng.normal(0, 0.5, n)
    poor = y + rng.normal(0, 2.0, n)
    groups = np.arange(n) // 3
    res = M.paired_bootstrap(y, good, poor, groups, n=300, seed=0)
    assert res.difference > 0 and res.ci_low > 0
    assert res.p_value == pytest.approx(2 / 301)
    same = M.paired_bootstrap(y, good, good, groups, n=100, seed=0)
    assert same.difference == 0 and same.p_value == 1.0 and same.ci_low == same.ci_high == 0


# --------------------------------------------------------------------------- ROC band


def test_roc_band_area_and_separable_case() -> None:
    rng = np.random.default_rng(17)
    y, p = _random_case(rng, 800, ties=True)
    band = M.roc_band(y, p, rng.integers(0, 300, y.size), n=100, seed=0, n_points=2001)
    assert np.trapezoid(band.tpr, band.fpr) == pytest.approx(M.auroc(y, p), abs=1e-3)
    assert (band.tpr_low <= band.tpr + 1e-12).all() and (band.tpr <= band.tpr_high + 1e-12).all()
    y = np.r_[np.zeros(20), np.ones(20)]
    p = np.r_[np.linspace(0, 0.4, 20), np.linspace(0.6, 1, 20)]
    perfect = M.roc_band(y, p, None, n=50, seed=0)
    assert (perfect.tpr == 1).all() and (perfect.tpr_low == 1).all()
    assert len(perfect.to_dict()["fpr"]) == 101
