"""Entry point of ``python -m bench.predict`` (see :mod:`bench.predict.run`)."""

import sys

from bench.predict.run import main

sys.exit(main())
