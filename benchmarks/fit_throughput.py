"""Checkout shortcut for ``python -m medft.benchmarks.fit_throughput``: the code lives there."""

from medft.benchmarks.fit_throughput import main

if __name__ == "__main__":
    raise SystemExit(main())
