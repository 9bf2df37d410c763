"""Progress bars (tqdm) driven by the engine's counters.

The engine advances atomic counters after each decode; the thread that
waits for it (with the GIL released) reads them at most every 50 ms and
calls a Python function, which moves the bar. So a bar costs the forward
pass nothing, and one ``embed`` call over many texts moves continuously.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, Optional

__all__ = ["embed_bar", "Bar"]


class Bar:
    """A tqdm bar counted in texts with a tokens/s figure. ``hook(offset)``
    gives the function to pass as ``progress=`` to one engine call whose
    texts start at ``offset`` of the bar's total."""

    def __init__(self, total: Optional[int], *, desc: str = "embed", file=None, unit: str = "text") -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm(total=total, unit=unit, desc=desc, file=file or sys.stderr,
                          dynamic_ncols=True, smoothing=0.1)
        self._t0 = time.perf_counter()
        self._tokens_before = 0  # tokens of the calls already finished
        self._call_tokens = 0

    def hook(self, offset: int) -> Callable[[int, int, int], None]:
        self._tokens_before += self._call_tokens
        self._call_tokens = 0

        def on_progress(texts: int, tokens: int, _tokens_total: int) -> None:
            self._call_tokens = tokens
            done = offset + texts
            if done > self._tqdm.n:
                self._tqdm.update(done - self._tqdm.n)
            elapsed = time.perf_counter() - self._t0
            if elapsed > 0:
                rate = (self._tokens_before + tokens) / elapsed
                self._tqdm.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)

        return on_progress

    def close(self) -> None:
        self._tqdm.close()


@contextlib.contextmanager
def embed_bar(total: Optional[int], *, enabled: bool,
              unit: str = "text") -> Iterator[Optional[Callable[[int, int, int], None]]]:
    """The progress hook for one ``embed`` call (None when not enabled);
    ``unit="image"`` for ``embed_images``."""
    if not enabled:
        yield None
        return
    bar = Bar(total, unit=unit)
    try:
        yield bar.hook(0)
    finally:
        bar.close()
