"""Build the index of one Qdrant Edge shard: ``python _edge_optimize.py SHARD_DIR``.

Run by ``EdgeStore.optimize`` in a child process, on a copy of a live shard: the engine holds
the GIL while it optimizes, so in the server's own process it would stop every thread. Run as
a file, not a module, so that it imports qdrant-edge alone.
"""

import sys

import qdrant_edge

if __name__ == "__main__":
    shard = qdrant_edge.EdgeShard.load(sys.argv[1])
    try:
        shard.optimize()
    finally:
        shard.close()
