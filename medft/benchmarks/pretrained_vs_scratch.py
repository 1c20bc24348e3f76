"""The quickstart recipe from ImageNet weights versus from random initialisation.

Runs `medft quickstart` twice on the same synthetic data (same seed, split and
schedule), once with the offline ImageNet weights and once with `pretrained:
false`, and prints test AUROC and wall time for each. This is the evidence that
the pretrained starting point is what makes the 5-minute CPU recipe work.

    python -m medft.benchmarks.pretrained_vs_scratch --out /tmp/pvs [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medft._io import write_json
from medft.quickstart import run_quickstart


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    rows = {}
    for name, pretrained in (("imagenet", True), ("scratch", False)):
        metrics = run_quickstart(args.out / name, seed=args.seed, pretrained=pretrained, quiet=True)
        rows[name] = {
            "test_auroc": metrics["test"].get("auroc"),
            "seconds": metrics["seconds"],
            "pretrained": metrics["pretrained"],
        }
    write_json(args.out / "pretrained_vs_scratch.json", rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'start':<10} {'test AUROC':>10} {'seconds':>8}")
        for name, row in rows.items():
            print(f"{name:<10} {row['test_auroc']:>10.3f} {row['seconds']:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
