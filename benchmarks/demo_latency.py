"""Checkout shortcut for ``python -m medft.benchmarks.demo_latency``: the code lives there."""

from medft.benchmarks.demo_latency import main

if __name__ == "__main__":
    raise SystemExit(main())
