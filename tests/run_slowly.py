"""Run the CLI with its heavy steps slowed down, so a test can SIGKILL it mid-step.

Used by tests/test_pipeline.py as ``python -m tests.run_slowly run MANIFEST ...``. Only timing
changes: each generation batch, scoring batch and written checkpoint chunk takes a little longer.
"""

from __future__ import annotations

import functools
import sys
import time


def _slowed(fn, seconds: float):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return wrapper


def main() -> None:
    from expo_batch import checkpoint, score
    from expo_batch.cli import main as cli_main
    from expo_batch.generate import transformers_backend

    tb = transformers_backend.TransformersBackend
    tb.generate = _slowed(tb.generate, 0.3)
    rm = score.RewardModelScorer
    rm.score = _slowed(rm.score, 0.3)
    for cls in (checkpoint.PlannedShardWriter, checkpoint.ShardedWriter):
        for meth in ("write", "add"):
            if hasattr(cls, meth):
                setattr(cls, meth, _slowed(getattr(cls, meth), 0.05))
    cli_main(sys.argv[1:])


if __name__ == "__main__":
    main()
