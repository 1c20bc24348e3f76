"""Checkout shortcut for ``python -m medft.benchmarks.saliency_latency``: the code lives there."""

from medft.benchmarks.saliency_latency import main

if __name__ == "__main__":
    raise SystemExit(main())
