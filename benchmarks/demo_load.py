"""Checkout shortcut for ``python -m medft.benchmarks.demo_load``: the code lives there."""

from medft.benchmarks.demo_load import main

if __name__ == "__main__":
    raise SystemExit(main())
