"""Checkout shortcut for ``python -m medft.benchmarks.gpu``: the code lives there."""

from medft.benchmarks.gpu import main

if __name__ == "__main__":
    raise SystemExit(main())
