"""Checkout shortcut for ``python -m medft.benchmarks.freezing``: the code lives there."""

from medft.benchmarks.freezing import main

if __name__ == "__main__":
    raise SystemExit(main())
