"""Checkout shortcut for ``python -m medft.benchmarks.registry``: the code lives there."""

from medft.benchmarks.registry import main

if __name__ == "__main__":
    raise SystemExit(main())
