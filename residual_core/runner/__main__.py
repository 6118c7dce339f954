"""``python -m residual_core.runner``: run chapters, build the book, sweep (see :mod:`.cli`)."""

import sys

from residual_core.runner.cli import main

sys.exit(main())
