"""Checkout shortcut for ``python -m medft.benchmarks.inference``: the code lives there."""

from medft.benchmarks.inference import main

if __name__ == "__main__":
    raise SystemExit(main())
