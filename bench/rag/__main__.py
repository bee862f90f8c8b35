"""Entry point of ``python -m bench.rag`` (see :mod:`bench.rag.run`)."""

import sys

from bench.rag.run import main

sys.exit(main())
