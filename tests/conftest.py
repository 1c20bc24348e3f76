"""Shared fixtures: the read-only test corpus, tiny synthetic datasets, determinism."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only corpus in ../shared/data (skips when absent)."""
    p = Path(os.environ.get("MEDFT_SHARED_DATA", ROOT / ".." / "shared" / "data")).resolve()
    if not (p / "corpus.csv").is_file():
        pytest.skip(f"shared test data not found at {p}")
    return p


@pytest.fixture(autouse=True)
def _offline_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: make any hub download fail fast."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
