"""``python -m medft.cli``: the ``medft`` command without its console script."""

import sys

from medft.cli import main

sys.exit(main())
