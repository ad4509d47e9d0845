"""Embedders turn a row's text into a vector; the default one needs no download at all.

An embedder has a `model` name, a `dimension`, and `embed(texts)` returning one unit-length
float32 row per text. The model name is stored with every vector, so switching embedder
re-embeds rows instead of mixing vectors of different models in one search.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    model: str
    dimension: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """One row per text, float32, L2-normalised."""


_TOKEN = re.compile(r"\w+", re.UNICODE)


def _stem(token: str) -> str:
    """A crude English stem so that 'payment' and 'payments' share a feature."""
    for suffix in ("ing", "ies", "es", "s"):
        if len(token) > len(suffix) + 3 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


class HashingEmbedder:
    """Feature hashing of word stems and word pairs: deterministic, instant, and offline.

    It finds repositories that share words with the query, not meaning; a sentence model
    (GHETL_EMBEDDER=minilm) is what finds "card settlement" in "payment clearing service".
    """

    def __init__(self, dimension: int = 384) -> None:
        self.dimension = dimension
        self.model = f"ghetl-hashing-v1-{dimension}"

    def _features(self, text: str) -> list[str]:
        words = [_stem(t) for t in _TOKEN.findall(text.lower()) for t in t.split("_") if t]
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                h = zlib.crc32(feature.encode())
                out[row, h % self.dimension] += 1.0 if (h >> 16) & 1 else -1.0
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


def from_bytes(blob: bytes, dimension: int) -> np.ndarray:
    vector = np.frombuffer(blob, dtype="<f4")
    if vector.shape != (dimension,):
        raise ValueError(f"stored vector has {vector.size} values, expected {dimension}")
    return vector


_cache: dict[str, Embedder] = {}


def get_embedder(name: str | None = None) -> Embedder:
    """The embedder named by GHETL_EMBEDDER (default `hash`), loaded once per process."""
    name = (name or os.environ.get("GHETL_EMBEDDER") or "hash").lower()
    if name not in _cache:
        if name == "hash":
            _cache[name] = HashingEmbedder()
        else:
            raise ValueError(f"GHETL_EMBEDDER must be 'hash', got '{name}'")
    return _cache[name]
