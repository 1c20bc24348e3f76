"""Checkout shortcut for ``python -m medft.benchmarks.scale``: the code lives there."""

from medft.benchmarks.scale import main

if __name__ == "__main__":
    raise SystemExit(main())
