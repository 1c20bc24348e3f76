"""Checkout shortcut for ``python -m medft.benchmarks.loader``: the code lives there."""

from medft.benchmarks.loader import main

if __name__ == "__main__":
    raise SystemExit(main())
