"""Two consoles: stdout for data (tables, JSON), stderr for progress, warnings and errors."""

from __future__ import annotations

import os
import sys

from rich.console import Console

# Piped or redirected output is read later, not in an 80-column window: do not fold tables.
_width = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160

out = Console(soft_wrap=True, width=_width)
err = Console(stderr=True, soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)
