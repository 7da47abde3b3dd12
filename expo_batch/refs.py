"""Model references as written in a manifest or on the command line.

``org/name``, ``org/name@revision`` (branch, tag or commit) or a local folder. Parsed once into a
frozen value; resolving it (hub.py) pins a Hub reference to its commit SHA.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_RE = re.compile(rf"^(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<rev>[^\s@]+))?$")


class ModelRef(BaseModel):
    """A parsed model reference. Exactly one of ``repo_id`` or ``path`` is set."""

    model_config = ConfigDict(frozen=True)

    text: str
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        return self.text


def looks_local(text: str) -> bool:
    return text.startswith((".", "/", "~")) or Path(text).expanduser().exists()


def parse_ref(text: str, base_dir: Path | None = None) -> ModelRef:
    """Parse ``text`` into a :class:`ModelRef`.

    A string that starts with ``.``, ``/`` or ``~``, or names an existing folder, is a local path
    (relative paths are taken from ``base_dir``, the manifest's folder). Anything else must look
    like ``org/name`` or ``org/name@revision``.

    Raises:
        ValueError: with a message that says which forms are accepted.
    """
    text = str(text).strip()
    if not text:
        raise ValueError("empty model reference")
    if (
        text.startswith((".", "/", "~"))
        or (base_dir is not None and (base_dir / text).is_dir())
        or Path(text).is_dir()
    ):
        p = Path(text).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return ModelRef(text=text, path=p.resolve())
    m = _HUB_RE.match(text)
    if not m or ".." in m.group("repo"):
        raise ValueError(
            f"{text!r} is not a model reference: use 'org/name', 'org/name@revision' "
            "or a local folder ('./path' or '/abs/path')"
        )
    return ModelRef(text=text, repo_id=m.group("repo"), revision=m.group("rev"))
