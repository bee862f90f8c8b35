"""Entry point of ``python -m bench.drift`` (see :mod:`bench.drift.run`)."""

import sys

from bench.drift.run import main

sys.exit(main())
