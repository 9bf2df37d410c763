"""Multi-vector (late interaction) output and its scorer.

``Model.embed_multivector`` returns a ``MultiVectors``: every token vector of
every text in one float32 array, ``data`` (total tokens x 128), and
``offsets`` (n + 1 int64) so that text i owns rows ``offsets[i]:offsets[i+1]``.
No Python object per token; ``result[i]`` is a view.

``maxsim`` is the late-interaction score of ColBERT / ColPali and
jina-embeddings-v4: for each query token its best dot product over a
document's tokens, summed over the query's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Iterator, Union

import numpy as np


class MultiVectors(Sequence):
    """Per-token vectors of n texts (see the module's help)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, pooled: Any = None):
        data = np.asarray(data, dtype=np.float32)
        offsets = np.asarray(offsets, dtype=np.int64)
        if data.ndim != 2 or offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 \
                or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
            raise ValueError("MultiVectors needs data (rows, width) and offsets (n + 1,) rising "
                             "from 0 to rows")
        self.data = data
        self.offsets = offsets
        self.pooled = pooled

    @classmethod
    def from_arrays(cls, arrays: Sequence) -> "MultiVectors":
        """From a list of (n_tokens_i, width) arrays (copied into one)."""
        arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
        if not arrays:
            return cls(np.zeros((0, 0), np.float32), np.zeros(1, np.int64))
        widths = {a.shape[1] if a.ndim == 2 else -1 for a in arrays}
        if len(widths) != 1 or -1 in widths:
            raise ValueError("every array must be 2-D (n_tokens, width) of one width")
        offsets = np.zeros(len(arrays) + 1, np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        return cls(np.concatenate(arrays), offsets)

    @property
    def width(self) -> int:
        return int(self.data.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each text."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if i < -n or i >= n:
            raise IndexError(f"text index {i} out of range for {n} texts")
        i %= n
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"jv4.MultiVectors({len(self)} texts, {len(self.data)} token vectors of width {self.width})"


def _as_multi(x: Any, what: str) -> MultiVectors:
    if isinstance(x, MultiVectors):
        return x
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return MultiVectors(x, np.array([0, len(x)], np.int64))
    if isinstance(x, (list, tuple)):
        return MultiVectors.from_arrays(x)
    raise TypeError(f"{what} must be a jv4.MultiVectors, a (n_tokens, width) array or a list of them, "
                    f"got {type(x).__name__}")


def maxsim(query: Union[MultiVectors, np.ndarray, Sequence], docs: Union[MultiVectors, np.ndarray, Sequence],
           *, block: int = 1 << 22) -> np.ndarray:
    """Late-interaction scores: ``sum over query tokens of max over doc
    tokens of q . d``.

    ``query``: one query (a ``(n_tokens, width)`` array) or several (a
    ``MultiVectors`` or a list of arrays); ``docs`` likewise. One query as an
    array gives ``(n_docs,)``; several give ``(n_queries, n_docs)``. Computed
    as matrix products over blocks of at most ``block`` query-token x
    doc-token scores. A document with no token scores 0."""
    one = isinstance(query, np.ndarray)
    q = _as_multi(query, "query")
    d = _as_multi(docs, "docs")
    if len(q) and len(d) and q.width != d.width:
        raise ValueError(f"query vectors are {q.width} wide, documents' {d.width}")
    out = np.zeros((len(q), len(d)), np.float32)
    if len(q) == 0 or len(d) == 0 or len(q.data) == 0 or len(d.data) == 0:
        return out[0] if one else out
    lengths = d.lengths
    nonempty = np.flatnonzero(lengths > 0)
    starts = d.offsets[:-1][nonempty]
    q_rows = np.flatnonzero(q.lengths > 0)  # queries with tokens (others score 0)
    q_starts = q.offsets[:-1][q_rows]
    # documents in blocks so that one block's score matrix stays small
    rows_per_block = max(1, block // max(1, len(q.data)))
    b0 = 0
    while b0 < len(nonempty):
        # documents nonempty[b0:b1] cover rows starts[b0] .. end of doc b1-1
        b1 = b0 + 1
        while b1 < len(nonempty) and d.offsets[nonempty[b1] + 1] - starts[b0] <= rows_per_block:
            b1 += 1
        lo, hi = starts[b0], d.offsets[nonempty[b1 - 1] + 1]
        sims = q.data @ d.data[lo:hi].T                               # (q tokens, doc tokens)
        best = np.maximum.reduceat(sims, starts[b0:b1] - lo, axis=1)  # (q tokens, docs)
        per_query = np.add.reduceat(best, q_starts, axis=0)          # (queries, docs)
        out[np.ix_(q_rows, nonempty[b0:b1])] = per_query
        b0 = b1
    return out[0] if one else out
