"""Entry point of ``python -m bench.cli`` (see :mod:`bench.cli.run`)."""

import sys

from bench.cli.run import main

sys.exit(main())
