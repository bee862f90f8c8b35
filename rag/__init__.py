"""RAG: load documents, chunk them, embed and store them, retrieve and answer with citations.

Each stage is its own module; this is the public surface. The vector stores live in
:mod:`rag.stores` (the Qdrant server store imports qdrant-client only when used).
"""

from rag.answer import Answer, Answerer, Source, ensure_answer_prompt, load_answer_prompt
from rag.chunking import Chunk, HFTokenizer, Tokenizer, chunk_document
from rag.embedder import Embedder, SentenceTransformerEmbedder
from rag.ingest import Ingestor, IngestReport
from rag.loaders import Document, LoadResult, Section, Skipped, load_bytes, load_file, load_folder
from rag.retriever import HybridRetriever, RetrievedChunk
from rag.sparse import BM25Encoder

__all__ = [
    "Answer",
    "Answerer",
    "BM25Encoder",
    "Chunk",
    "Document",
    "Embedder",
    "HFTokenizer",
    "HybridRetriever",
    "IngestReport",
    "Ingestor",
    "LoadResult",
    "RetrievedChunk",
    "Section",
    "SentenceTransformerEmbedder",
    "Skipped",
    "Source",
    "Tokenizer",
    "chunk_document",
    "ensure_answer_prompt",
    "load_answer_prompt",
    "load_bytes",
    "load_file",
    "load_folder",
]
