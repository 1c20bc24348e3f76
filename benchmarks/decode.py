"""Checkout shortcut for ``python -m medft.benchmarks.decode``: the code lives there."""

from medft.benchmarks.decode import main

if __name__ == "__main__":
    raise SystemExit(main())
