"""Entry point of ``python -m bench.gateway`` (see :mod:`bench.gateway.run`)."""

import sys

from bench.gateway.run import main

sys.exit(main())
