"""Start the medft clinician's demo: ``python demo/app.py [--checkpoint CKPT] [--port 7860]``.

Same options as ``medft demo``; all logic lives in :mod:`medft.demo` (see docs/demo.md).
"""

from __future__ import annotations

import argparse
import sys

from medft.demo.settings import add_demo_arguments
from medft.errors import MedftError


def main(argv: list[str] | None = None) -> int:
    """Parse the options and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="demo/app.py", description="Review X-ray predictions and saliency maps (medft)."
    )
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    from medft.demo import run_demo, settings_from_args

    try:
        return run_demo(settings_from_args(args))
    except MedftError as exc:
        print(f"medft demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
