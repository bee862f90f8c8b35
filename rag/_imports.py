"""One lock around importing the model libraries (transformers, sentence-transformers).

transformers builds its modules lazily, and that is not safe from two threads at once:
``from transformers import AutoTokenizer`` in one thread while another imports
sentence-transformers fails with "cannot import name 'AutoTokenizer'" (seen in ``opsloop
serve``, where the bundled-docs ingestion and a first upload load models concurrently).
Imports are process-wide, so this lock is too.
"""

from __future__ import annotations

import threading

__all__ = ["MODEL_IMPORT_LOCK"]

MODEL_IMPORT_LOCK = threading.Lock()
