"""Checkout shortcut for ``python -m medft.benchmarks.pretrained_vs_scratch``."""

from medft.benchmarks.pretrained_vs_scratch import main

if __name__ == "__main__":
    raise SystemExit(main())
