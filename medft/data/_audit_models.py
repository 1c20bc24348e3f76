"""Honest predictors for the shortcut audit: out-of-fold scores and patient-bootstrap CIs.

Every predictor is fitted on training folds only and scored on the held-out fold, with
folds that keep each patient's images together, so an AUROC here estimates what a model
could learn from a feature on *new patients*, not how well it memorised the data. The
direction of a numeric feature is learned on the training folds too, so an AUROC below
0.5 is possible and simply means "no signal".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medft.stats import auroc, cluster_bootstrap

__all__ = [
    "Estimate",
    "estimate",
    "oof_all_features",
    "oof_categorical",
    "oof_numeric",
    "oof_probe",
]

_SMOOTHING = 2.0  # pseudo-images at the training prior added to every level / bin
_MAX_BINS = 10
_CI_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """An out-of-fold AUROC with its patient-bootstrap confidence interval."""

    auroc: float
    ci_low: float
    ci_high: float


# --------------------------------------------------------------------------- AUROC


def estimate(
    scores: np.ndarray, y: np.ndarray, patients: np.ndarray, *, n_boot: int, seed: int
) -> Estimate:
    """AUROC of out-of-fold scores with a patient-bootstrap percentile CI.

    Both come from medft's one statistics engine (:mod:`medft.stats`), the same AUROC kernel
    and patient resampling as ``medft evaluate``: all images of a drawn patient come along.
    NaN throughout when only one class is present.
    """
    found = cluster_bootstrap(y, scores, patients, auroc, n=n_boot, seed=seed, ci=_CI_LEVEL)
    if not np.isfinite(found.value):
        return Estimate(float("nan"), float("nan"), float("nan"))
    return Estimate(found.value, found.ci_low, found.ci_high)


# ------------------------------------------------------------- univariate predictors


def oof_categorical(values: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores of a one-hot (per-level rate) model of one categorical feature.

    A level's score is its smoothed positive rate in the training folds; a level never
    seen in training gets the training prior. This is the prediction of a one-hot
    logistic regression with a mild prior, written out so it is fast and exact.
    """
    levels = np.asarray(values, dtype=str)
    scores = np.empty(len(y), dtype=float)
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test
        prior = y[train].mean() if train.any() else 0.5
        table = pd.DataFrame({"level": levels[train], "y": y[train]}).groupby("level")["y"]
        rate = (table.sum() + _SMOOTHING * prior) / (table.count() + _SMOOTHING)
        scores[test] = pd.Series(levels[test]).map(rate).fillna(prior).to_numpy()
    return scores


def oof_numeric(values: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores of one numeric feature: binned rates, then the value's direction.

    On the training folds the feature is cut at quantiles (at most ten bins, missing
    values in a bin of their own) and each bin gets its smoothed positive rate; within a
    bin, images are ordered by the raw value in the direction that the training folds
    favour. A monotone tell therefore keeps its full ranking, and a non-monotone one
    (positives at middle sizes) is still found.
    """
    x = np.asarray(values, dtype=float)
    scores = np.empty(len(y), dtype=float)
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test
        scores[test] = _binned_scores(x[train], y[train], x[test])
    return scores


def _binned_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    prior = y_train.mean() if len(y_train) else 0.5
    finite = np.isfinite(x_train)
    if not finite.any():
        return np.full(len(x_test), prior)
    quantiles = np.linspace(0.0, 1.0, _MAX_BINS + 1)[1:-1]
    edges = np.unique(np.quantile(x_train[finite], quantiles))
    bins_train = _bin(x_train, edges)
    bins_test = _bin(x_test, edges)
    n_bins = len(edges) + 2  # bins 0..len(edges) plus the missing bin
    count = np.bincount(bins_train, minlength=n_bins)
    positives = np.bincount(bins_train, weights=y_train, minlength=n_bins)
    rate = (positives + _SMOOTHING * prior) / (count + _SMOOTHING)
    direction = _direction(x_train[finite], y_train[finite])
    span = np.nanmax(np.abs(x_train[finite])) or 1.0
    tie_break = np.where(np.isfinite(x_test), direction * x_test / span, 0.0)
    return rate[bins_test] + 1e-6 * tie_break


def _bin(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(edges, x, side="right")
    return np.where(np.isfinite(x), bins, len(edges) + 1)


def _direction(x: np.ndarray, y: np.ndarray) -> float:
    """+1 if larger values go with positives in these (training) images, else -1."""
    return -1.0 if auroc(y, x) < 0.5 else 1.0


# ---------------------------------------------------------------- joint predictors


def oof_all_features(
    numeric: pd.DataFrame, categorical: pd.DataFrame, y: np.ndarray, folds: np.ndarray
) -> np.ndarray:
    """Out-of-fold scores of one logistic model on every metadata feature together.

    Numbers enter as they are (standardised, with a missing-value indicator) and also cut
    into quantile bins, so a tell at middle values counts too; categories are one-hot
    encoded with rare levels pooled. Several weak tells that add up (a vendor *and* a
    size) then show up even when no single feature reaches the threshold.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, StandardScaler

    number_columns, category_columns = list(numeric.columns), list(categorical.columns)
    encoder = ColumnTransformer(
        [
            (
                "scaled",
                make_pipeline(
                    SimpleImputer(strategy="median", add_indicator=True), StandardScaler()
                ),
                number_columns,
            ),
            (
                "binned",
                make_pipeline(
                    SimpleImputer(strategy="median"),
                    KBinsDiscretizer(n_bins=_MAX_BINS, encode="onehot-dense", strategy="quantile"),
                ),
                number_columns,
            ),
            (
                "onehot",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist",
                    min_frequency=5,
                    max_categories=16,
                    sparse_output=False,
                ),
                category_columns,
            ),
        ]
    )
    model = make_pipeline(encoder, LogisticRegression(C=0.3, max_iter=1000))
    return _oof_model(model, pd.concat([numeric, categorical], axis=1), y, folds)


def oof_probe(features: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores of a ridge-penalised logistic regression on thumbnail pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=300))
    return _oof_model(model, features, y, folds)


def _rows(features: np.ndarray | pd.DataFrame, mask: np.ndarray) -> np.ndarray | pd.DataFrame:
    if isinstance(features, pd.DataFrame):
        return features.iloc[np.flatnonzero(mask)]
    return features[mask]


def _oof_model(
    model: Any, features: np.ndarray | pd.DataFrame, y: np.ndarray, folds: np.ndarray
) -> np.ndarray:
    from sklearn.base import clone

    scores = np.empty(len(y), dtype=float)
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test
        y_train = y[train]
        if len(np.unique(y_train)) < 2:
            scores[test] = y_train.mean() if len(y_train) else 0.5
            continue
        fitted = clone(model)
        x_train, x_test = _rows(features, train), _rows(features, test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence / constant-column chatter
            fitted.fit(x_train, y_train)
            scores[test] = fitted.predict_proba(x_test)[:, 1]
    return scores
