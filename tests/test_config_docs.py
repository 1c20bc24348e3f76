"""The generated config-key reference (docs/reference/config.md) and its docstring parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from medft.config_docs import docstring_args, render

ROOT = Path(__file__).resolve().parents[1]


class _Documented:
    """Something configurable.

    Args:
        size: side in pixels,
            wrapped onto a second line.
        mode (str): ``pad`` or ``crop``.

    Returns:
        nothing worth parsing.
    """


def test_docstring_args_reads_google_args_with_continuations() -> None:
    assert docstring_args(_Documented) == {
        "size": "side in pixels, wrapped onto a second line.",
        "mode": "`pad` or `crop`.",
    }


@pytest.fixture(scope="module")
def page() -> str:
    """The page rendered from the real ``--print_config`` (about 10 s: LightningCLI)."""
    return render()


def test_render_fills_values_and_meanings() -> None:
    config = {
        "seed_everything": 0,
        "model": {"backbone": "resnet18", "lr": 0.001},
        "data": {"manifest": "x.csv", "image_size": 224},
        "trainer": {"max_epochs": 3},
    }
    page = render(config)
    assert "| `model.lr` | `0.001` | peak learning rate of the head. |" in page
    assert "| `data.image_size` | `224` |" in page and "| `trainer.max_epochs` | `3` |" in page


def test_every_medft_config_key_has_a_docstring_entry(page: str) -> None:
    for line in page.splitlines():
        if line.startswith(
            ("| `model.", "| `data.", "| `loader_monitor.", "| `ema.", "| `l2sp.", "| `forgetting.")
        ):
            assert not line.endswith("|  |"), f"config key without an Args: entry: {line}"


def test_config_reference_page_matches_print_config(page: str) -> None:
    committed = (ROOT / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    assert committed == page, (
        "docs/reference/config.md is stale: run "
        "`python -m medft.config_docs > docs/reference/config.md`"
    )
