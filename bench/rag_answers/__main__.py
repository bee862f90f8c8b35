"""Entry point of ``python -m bench.rag_answers`` (see :mod:`bench.rag_answers.run`)."""

import sys

from bench.rag_answers.run import main

sys.exit(main())
