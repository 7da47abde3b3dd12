"""Run the command line in-process, as a user would type it, and get its exit code."""

from __future__ import annotations


def cli(*args: str) -> int:
    """``expo-batch ARGS...`` in this process; returns the exit code (output goes to capsys)."""
    from expo_batch.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0
