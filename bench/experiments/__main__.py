"""Entry point of ``python -m bench.experiments`` (see :mod:`bench.experiments.run`)."""

import sys

from bench.experiments.run import main

sys.exit(main())
