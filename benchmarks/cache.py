"""Checkout shortcut for ``python -m medft.benchmarks.cache``: the code lives there."""

from medft.benchmarks.cache import main

if __name__ == "__main__":
    raise SystemExit(main())
