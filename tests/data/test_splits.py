"""Patient-grouped, stratified splits; folds.csv; the leakage guard."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medft.data._hashing import patient_key
from medft.data.splits import (
    align_assignment,
    check_no_leakage,
    folds_for_repeat,
    holdout_split,
    inner_split,
    kfold_split,
    read_assignment,
    split_from_column,
    write_assignment,
)
from medft.errors import ConfigError, DataError, LeakageError

# Tiny random tables often leave a rare label out of some part; that warning is tested once.
pytestmark = pytest.mark.filterwarnings("ignore:label .* has positives in only:UserWarning")

LABELS = ["effusion", "nodule", "mass"]
PREVALENCE = (0.3, 0.1, 0.05)


def random_table(n_patients: int, seed: int, max_images: int = 8) -> pd.DataFrame:
    """Many images per patient, correlated labels within a patient, some unknown (NaN)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        patient_has = rng.random(len(LABELS)) < PREVALENCE
        for i in range(int(rng.integers(1, max_images + 1))):
            labels = np.where(rng.random(len(LABELS)) < 0.8, patient_has, rng.random(3) < 0.2)
            labels = labels.astype(float)
            labels[rng.random(len(LABELS)) < 0.1] = np.nan
            rows.append((f"/data/P{p:04d}/img{i}.dcm", f"P{p:04d}", *labels))
    return pd.DataFrame(rows, columns=["path", "patient_id", *LABELS])


def parts_per_patient(table: pd.DataFrame, parts: pd.Series) -> pd.Series:
    return (
        pd.Series(parts.to_numpy(), index=table["patient_id"].to_numpy()).groupby(level=0).nunique()
    )


@pytest.mark.parametrize("seed", range(6))
def test_no_patient_in_two_parts_property(seed: int) -> None:
    table = random_table(int(np.random.default_rng(seed).integers(20, 120)), seed)
    folds = kfold_split(table, labels=LABELS, k=5, seed=seed, repeats=2)
    for repeat in (0, 1):
        fold = folds_for_repeat(folds, repeat)
        assert fold.index.equals(table.index)  # every image exactly once per repeat
        assert set(fold) == set(range(5))
        assert parts_per_patient(table, fold).max() == 1
    split = holdout_split(table, labels=LABELS, seed=seed)
    assert split.index.equals(table.index)
    assert set(split) == {"train", "val", "test"}
    assert parts_per_patient(table, split).max() == 1
    assert check_no_leakage(table, folds) == []
    assert check_no_leakage(table, split) == []


def test_folds_keep_prevalence_and_size() -> None:
    deviations_ours, deviations_random = [], []
    for seed in range(5):
        table = random_table(200, seed)
        positives = table[LABELS] == 1.0
        overall = positives.mean()
        fold = folds_for_repeat(kfold_split(table, labels=LABELS, k=5, seed=seed))
        deviation = (positives.groupby(fold).mean() - overall).abs().to_numpy().max()
        deviations_ours.append(deviation)
        sizes = fold.value_counts()
        assert sizes.max() - sizes.min() <= 0.05 * len(table)
        # Baseline: patients dealt to folds at random (grouped but not stratified).
        patients = table["patient_id"].unique()
        dealt = dict(
            zip(patients, np.random.default_rng(seed).permutation(len(patients)) % 5, strict=True)
        )
        random_fold = table["patient_id"].map(dealt)
        deviations_random.append(
            (positives.groupby(random_fold).mean() - overall).abs().to_numpy().max()
        )
    assert max(deviations_ours) < 0.03
    assert np.mean(deviations_ours) < np.mean(deviations_random) / 3


def test_correlated_patient_level_labels_stay_within_two_patients() -> None:
    """Labels fixed per patient and nested (findings only in abnormal patients), as in synth."""
    combos = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    weights = np.array([37, 27, 21, 5, 3, 7, 1]) / 101
    labels = ["abnormal", "nodule", "opacity", "effusion"]
    for seed in range(4):
        rng = np.random.default_rng(seed)
        rows = []
        for p in range(200):
            findings = combos[rng.choice(7, p=weights)] if p % 2 else (0, 0, 0)
            rows += [(f"/s/{p}_{i}.dcm", f"S{p:03d}", p % 2, *findings) for i in range(4)]
        table = pd.DataFrame(rows, columns=["path", "patient_id", *labels])
        fold = folds_for_repeat(kfold_split(table, labels=labels, k=5, seed=seed))
        per_patient = table.groupby("patient_id")[labels].max() == 1
        patient_fold = fold.groupby(table["patient_id"]).first()
        per_fold = per_patient.groupby(patient_fold).sum()
        assert (per_fold - per_patient.sum() / 5).abs().to_numpy().max() <= 2.0


def test_holdout_fractions_and_prevalence() -> None:
    table = random_table(300, seed=11)
    split = holdout_split(table, labels=LABELS, val=0.2, test=0.1, seed=4)
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.02)
    assert shares["val"] == pytest.approx(0.2, abs=0.02)
    assert shares["test"] == pytest.approx(0.1, abs=0.02)
    positives = table[LABELS] == 1.0
    by_part = positives.groupby(split).mean()
    assert (by_part - positives.mean()).abs().to_numpy().max() < 0.03


def test_same_seed_same_assignment_whatever_the_row_order() -> None:
    table = random_table(80, seed=3)
    first = kfold_split(table, labels=LABELS, k=4, seed=7, repeats=2)
    again = kfold_split(table, labels=LABELS, k=4, seed=7, repeats=2)
    pd.testing.assert_frame_equal(first, again)
    shuffled = table.sample(frac=1.0, random_state=1)
    from_shuffled = kfold_split(shuffled, labels=LABELS, k=4, seed=7)
    assert (folds_for_repeat(from_shuffled).loc[table.index] == folds_for_repeat(first)).all()
    other_seed = kfold_split(table, labels=LABELS, k=4, seed=8)
    assert not (folds_for_repeat(other_seed) == folds_for_repeat(first)).all()
    assert not (folds_for_repeat(first, 0) == folds_for_repeat(first, 1)).all()
    split = holdout_split(table, labels=LABELS, seed=2)
    assert (holdout_split(shuffled, labels=LABELS, seed=2).loc[table.index] == split).all()


def test_rare_label_spreads_one_positive_patient_per_fold() -> None:
    rows = []
    for p in range(40):
        rare = 1.0 if p < 5 else 0.0
        for i in range(3):
            rows.append((f"/d/{p}_{i}.dcm", f"id{p}", rare, float(p % 2)))
    table = pd.DataFrame(rows, columns=["path", "patient_id", "rare", "common"])
    fold = folds_for_repeat(kfold_split(table, labels=["rare", "common"], k=5, seed=0))
    rare_patients_per_fold = table[table["rare"] == 1.0].groupby(fold)["patient_id"].nunique()
    assert rare_patients_per_fold.tolist() == [1, 1, 1, 1, 1]


def test_one_class_and_unlabelled_tables_still_split() -> None:
    table = random_table(30, seed=5)
    table["never"] = 0.0
    table["always"] = 1.0
    table["unknown"] = np.nan
    fold = folds_for_repeat(kfold_split(table, labels=["never", "always", "unknown"], k=3))
    assert set(fold) == {0, 1, 2}
    assert parts_per_patient(table, fold).max() == 1
    assert set(holdout_split(table, labels=[], seed=1)) == {"train", "val", "test"}


def test_fewer_patients_than_folds_is_a_data_error() -> None:
    table = random_table(3, seed=0)
    with pytest.raises(DataError, match=r"only 3 patient\(s\) for k=5 folds.*k <= 3"):
        kfold_split(table, labels=LABELS, k=5)
    with pytest.raises(DataError, match="test part got no patient"):
        holdout_split(random_table(2, seed=0), labels=LABELS, val=0.3, test=0.01)


@pytest.mark.parametrize("kwargs", [{"val": 0.6, "test": 0.4}, {"val": -0.1}, {"test": 1.0}])
def test_bad_fractions_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        holdout_split(random_table(10, seed=0), labels=LABELS, **kwargs)


@pytest.mark.parametrize("kwargs", [{"k": 1}, {"k": 2.5}, {"repeats": 0}])
def test_bad_fold_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        kfold_split(random_table(10, seed=0), labels=LABELS, **kwargs)


def test_malformed_tables_are_refused() -> None:
    table = random_table(10, seed=0)
    with pytest.raises(DataError, match="no 'patient_id'"):
        kfold_split(table.drop(columns="patient_id"), labels=LABELS, k=2)
    with pytest.raises(DataError, match="not in the table"):
        kfold_split(table, labels=["absent"], k=2)
    blank = table.copy()
    blank.loc[3, "patient_id"] = " "
    with pytest.raises(DataError, match=r"empty patient_id in row\(s\) 4"):
        kfold_split(blank, labels=LABELS, k=2)
    with pytest.raises(DataError, match="index has duplicates"):
        kfold_split(pd.concat([table, table]), labels=LABELS, k=2)


def test_fold_without_positive_warns() -> None:
    table = random_table(20, seed=0)
    table["rare"] = 0.0
    table.loc[table["patient_id"] == "P0001", "rare"] = 1.0
    with pytest.warns(UserWarning, match=r"'rare' has positives in only 1 patient"):
        kfold_split(table, labels=["rare"], k=4)


def test_inner_split_is_grouped_train_and_val_only() -> None:
    table = random_table(60, seed=9)
    training = table[folds_for_repeat(kfold_split(table, labels=LABELS, k=5)) != 0]
    inner = inner_split(training, labels=LABELS, val=0.2, seed=1)
    assert inner.index.equals(training.index)
    assert set(inner) == {"train", "val"}
    assert parts_per_patient(training, inner).max() == 1


def doctored(table: pd.DataFrame) -> tuple[pd.Series, str]:
    split = holdout_split(table, labels=LABELS, seed=0)
    victim = table.index[table["patient_id"] == table["patient_id"].iloc[0]]
    assert len(victim) > 1
    split.loc[victim[0]] = "test" if split.loc[victim[1]] != "test" else "train"
    return split, str(table.loc[victim[0], "patient_id"])


def test_leakage_check_fails_on_a_doctored_split() -> None:
    table = random_table(30, seed=1)
    split, raw_id = doctored(table)
    with pytest.raises(LeakageError) as err:
        check_no_leakage(table, split)
    message = str(err.value)
    assert patient_key(raw_id) in message
    assert raw_id not in message
    assert "1 patient(s)" in message
    with pytest.warns(UserWarning, match="allowed explicitly"):
        assert check_no_leakage(table, split, allow=True) == [patient_key(raw_id)]
    with pytest.raises(LeakageError):
        check_no_leakage(table.assign(split=split), "split")


def test_leakage_check_on_folds_names_the_repeat_and_ignores_unassigned() -> None:
    table = random_table(30, seed=2)
    folds = kfold_split(table, labels=LABELS, k=3, repeats=2)
    rows = np.flatnonzero((table["patient_id"] == "P0000").to_numpy())
    assert len(rows) > 1
    second_repeat = np.flatnonzero(folds["repeat"].to_numpy() == 1)
    broken = folds.copy()
    column = broken.columns.get_loc("fold")
    broken.iloc[second_repeat[rows[0]], column] = (
        broken.iloc[second_repeat[rows[0]], column] + 1
    ) % 3
    with pytest.raises(LeakageError, match=f"repeat 1: patient {patient_key('P0000')}"):
        check_no_leakage(table, broken)
    fold = folds_for_repeat(folds).astype(float)
    fold.iloc[rows[0]] = np.nan  # excluded row: not a second part
    assert check_no_leakage(table, fold) == []


def test_split_from_column_normalises_and_guards() -> None:
    table = random_table(20, seed=4)
    official = holdout_split(table, labels=LABELS, seed=0).map(
        {"train": "Training", "val": "valid", "test": "TEST"}
    )
    split = split_from_column(table.assign(split=official))
    assert set(split) == {"train", "val", "test"}
    bad = official.copy()
    bad.iloc[5] = "holdout"
    with pytest.raises(DataError, match=r"row 6 \('holdout'\)"):
        split_from_column(table.assign(split=bad))
    leaky, _ = doctored(table)
    with pytest.raises(LeakageError):
        split_from_column(table.assign(official=leaky), "official")
    with pytest.warns(UserWarning):
        split_from_column(table.assign(official=leaky), "official", allow_leakage=True)


def test_folds_csv_round_trip_without_raw_ids(tmp_path: Path) -> None:
    table = random_table(25, seed=6)
    folds = kfold_split(table, labels=LABELS, k=5, repeats=2)
    out = write_assignment(tmp_path / "study" / "folds.csv", table, folds)
    text = out.read_text()
    assert text.splitlines()[0] == "path,patient_key,repeat,fold"
    assert "P0003" in text  # patient folder names in paths are the caller's choice ...
    saved = read_assignment(out)
    assert not saved["patient_key"].isin(table["patient_id"]).any()  # ... keys never raw
    assert saved["patient_key"].str.len().eq(16).all()
    assert list(saved.columns) == ["path", "patient_key", "repeat", "fold"]
    assert saved["fold"].dtype.kind == "i"
    assert [p.name for p in out.parent.iterdir()] == ["folds.csv"]  # no temp file left

    shuffled = table.sample(frac=1.0, random_state=3)
    restored = align_assignment(shuffled, saved)
    for repeat in (0, 1):
        assert (
            folds_for_repeat(restored, repeat).loc[table.index] == folds_for_repeat(folds, repeat)
        ).all()
    check_no_leakage(saved, saved)  # the file itself can be checked

    split = holdout_split(table, labels=LABELS)
    split_file = write_assignment(tmp_path / "splits.csv", table, split)
    assert (align_assignment(table, read_assignment(split_file)) == split).all()


def test_align_refuses_a_changed_manifest_or_salt(tmp_path: Path) -> None:
    table = random_table(10, seed=8)
    saved = read_assignment(
        write_assignment(
            tmp_path / "s.csv", table, holdout_split(table, labels=LABELS, val=0.2, test=0.2)
        )
    )
    with pytest.raises(DataError, match="covers"):
        align_assignment(table.iloc[:-1], saved.iloc[:-2])
    with pytest.raises(DataError, match="not in the manifest"):
        align_assignment(table.iloc[1:], saved)
    with pytest.raises(DataError, match="MEDFT_PATIENT_SALT"):
        align_assignment(table, saved, salt="another-site")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("path,patient_key,split\na,k1,train\nb,k2,holdout\n", r"row 2 \(line 3\): split"),
        ("path,patient_key,repeat,fold\na,k1,0,0\nb,k2,0,x\n", r"row 2 \(line 3\): fold 'x'"),
        ("path,patient_key,fold\na,k1,0\na,k1,1\n", "assigned twice"),
        ("path,split\na,train\n", "needs 'path', 'patient_key'"),
    ],
)
def test_read_assignment_validates(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "folds.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_assignment(path)


def test_read_assignment_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_assignment(tmp_path / "folds.csv")


def test_no_warning_when_every_fold_has_positives() -> None:
    table = random_table(100, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kfold_split(table, labels=LABELS[:2], k=3)
