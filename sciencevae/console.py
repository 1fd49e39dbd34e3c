"""What the ``sciencevae`` command prints besides its results: warnings as one line each.

>>> import warnings
>>> lines = WarningLines()
>>> with warnings.catch_warnings():
...     lines.install()
...     warnings.warn("3 genes have no counts")
...     warnings.warn("3 genes have no counts")
>>> lines.held
['3 genes have no counts']
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["WarningLines", "LIBRARY_WARNINGS"]

#: Warnings about libraries' own APIs: not about the user's data, so the command does not print them.
LIBRARY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


class WarningLines:
    """Warnings as one line each (``sciencevae: warning: ...``), each text once, none of
    :data:`LIBRARY_WARNINGS`. While the input is checked they are held back, so that a refused input
    prints its one error line only; :meth:`release` (when the run starts, or at the end) prints them."""

    def __init__(self) -> None:
        self.shown: dict[str, None] = {}  # every text so far, in order (a dict keeps insertion order)
        self.held: list[str] = []
        self.holding = True

    def install(self) -> None:
        """Route warnings here; call inside ``warnings.catch_warnings()``."""
        warnings.simplefilter("always")  # every warning reaches `show`, which prints each text once
        for category in LIBRARY_WARNINGS:
            warnings.simplefilter("ignore", category)
        warnings.showwarning = self.show

    def show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in self.shown:
            self.shown[text] = None
            self.held.append(text)
            if not self.holding:
                self.release()

    def release(self) -> None:
        self.holding = False
        for text in self.held:
            print(f"sciencevae: warning: {text}", file=sys.stderr)
        self.held.clear()
