"""huggingface_hub exceptions translated into :class:`HubError` messages a user can act on.

Every message names the reference as written and where it was written (``registry.yaml:42
pairs[3].aligned``). Transient failures (network down, timeouts, 5xx, 429) are retried with
exponential backoff first. The token never appears in a message: anything that looks like one is
masked before a message leaves this module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from expo_batch.errors import HubError
from expo_batch.hub import _env

T = TypeVar("T")

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{6,}")
_LOGIN_HINT = "set HF_TOKEN to a token of an account with access, or run `hf auth login`"


@dataclass(frozen=True)
class Context:
    """What a Hub call was about, for the message: the reference as written and its location.

    ``repo_type`` is ``model`` (the default) or ``dataset``; it picks the repo's page on the Hub
    and the noun used in messages.
    """

    text: str
    repo_id: str | None = None
    revision: str | None = None
    where: str | None = None
    repo_type: str = "model"

    @property
    def ref(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type} "
        return f"{kind}'{self.text}'" + (f" ({self.where})" if self.where else "")

    @property
    def noun(self) -> str:
        """What the repo is called in a message: ``repository`` or ``dataset repository``."""
        return "repository" if self.repo_type == "model" else f"{self.repo_type} repository"

    def url(self) -> str:
        """The repo's page on the current endpoint (datasets live under ``/datasets/``)."""
        from huggingface_hub import constants

        prefix = constants.REPO_TYPES_URL_PREFIXES.get(self.repo_type, "")
        return f"{_env.endpoint()}/{prefix}{self.repo_id or self.text}"


def scrub(text: str) -> str:
    """Mask the token in use (and anything shaped like a Hub token) in ``text``."""
    token = _env.current_token()
    if token:
        text = text.replace(token, "***")
    return _TOKEN_RE.sub("hf_***", text)


def _short(exc: BaseException) -> str:
    """One line about ``exc``: the HTTP status and the server's message, or the error's text."""
    status = _status(exc)
    if status is not None:
        server = getattr(exc, "server_message", None) or ""
        text = f"HTTP {status}" + (f": {server.strip()}" if server.strip() else "")
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        text = " ".join(lines[:2]) or type(exc).__name__
    return scrub(text if len(text) <= 300 else text[:297] + "...")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: no connection, a timeout, a dropped connection, 5xx, 408 or 429."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    for e in _chain(exc):
        if isinstance(e, (OfflineModeIsEnabled, httpx2.ProxyError)):
            return False
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            code = e.response.status_code
            return code >= 500 or code in (408, 429)
        if isinstance(e, httpx2.TransportError):
            return True
    return False


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def translate(exc: BaseException, ctx: Context, *, attempts: int = 1) -> HubError | None:
    """The :class:`HubError` for a huggingface_hub failure, or None when it is not a Hub failure."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = ctx.repo_id or ctx.text
    url = ctx.url()
    if isinstance(exc, GatedRepoError):
        has_token = _env.current_token() is not None
        why = (
            "the token in use has not been granted access"
            if has_token
            else "no Hugging Face token is set"
        )
        return HubError(
            f"{repo} is a gated {ctx.noun} and {why}: cannot read {ctx.ref}",
            f"accept its license on {url} (logged in as the token's account), then {_LOGIN_HINT}",
        )
    if (
        isinstance(exc, HfHubHTTPError)
        and _status(exc) == 401
        and not isinstance(exc, RepositoryNotFoundError)
    ):
        return HubError(
            "the Hub rejected the token (HF_TOKEN or the stored `hf auth login`) while reading "
            f"{ctx.ref}",
            "create a new token at https://huggingface.co/settings/tokens and set HF_TOKEN to it, "
            "or run `hf auth login`",
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(
            f"revision '{ctx.revision}' not found in {repo}: {ctx.ref}",
            f"use a branch, tag or full commit SHA that exists on {url}",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            f"{ctx.noun} {repo} not found on the Hub ({_env.endpoint()}): {ctx.ref}",
            f"check the spelling of 'org/name'; if the repository is private, {_LOGIN_HINT}",
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(f"a file is missing in {repo} for {ctx.ref}: {_short(exc)}")
    if isinstance(exc, OfflineModeIsEnabled) or (
        isinstance(exc, LocalEntryNotFoundError) and _env.is_offline()
    ):
        return offline_not_cached(ctx)
    if is_transient(exc):
        tries = f" after {attempts} attempt{'s' * (attempts != 1)}" if attempts > 1 else ""
        return HubError(
            f"could not reach the Hub at {_env.endpoint()} for {ctx.ref}{tries}: {_short(exc)}",
            "check the network (or proxy) and try again; with HF_HUB_OFFLINE=1 only the local "
            "cache is used",
        )
    if isinstance(exc, HfHubHTTPError):
        hint = f"check that the token has read access to {repo}" if _status(exc) == 403 else None
        return HubError(f"the Hub answered {_status(exc)} for {ctx.ref}: {_short(exc)}", hint)
    if isinstance(exc, (LocalEntryNotFoundError, httpx2.HTTPError)):
        return HubError(f"cannot read {ctx.ref} from the Hub: {_short(exc)}")
    return None


def offline_not_cached(ctx: Context) -> HubError:
    return HubError(
        f"{ctx.ref} is not in the local Hugging Face cache, and the Hub is not contacted because "
        "HF_HUB_OFFLINE is set",
        "unset HF_HUB_OFFLINE (or set it to 0) to download it, or run once online to cache it",
    )


# Endpoints that could not be connected to after all retries, until when (monotonic seconds).
# A batch resolving 40 references against an unreachable Hub then tries each once, not 4 times.
_UNREACHABLE: dict[str, float] = {}
UNREACHABLE_FOR_S = 60.0


def _is_connect_failure(exc: BaseException) -> bool:
    import httpx2

    return any(isinstance(e, (httpx2.ConnectError, httpx2.ConnectTimeout)) for e in _chain(exc))


def reset_unreachable() -> None:
    _UNREACHABLE.clear()


def call(fn: Callable[[], T], ctx: Context, retry: _env.RetryPolicy | None = None) -> T:
    """Run ``fn`` (a huggingface_hub call), retrying transient failures, translating the rest."""
    from expo_batch.console import warn

    retry = retry or _env.RetryPolicy.from_env()
    url = _env.endpoint()
    attempts = retry.attempts
    if _UNREACHABLE.get(url, 0.0) > time.monotonic():
        attempts = 1  # it was just found unreachable: one try, no backoff
    attempt = 0
    while True:
        attempt += 1
        try:
            result = fn()
            _UNREACHABLE.pop(url, None)
            return result
        except Exception as exc:
            if is_transient(exc) and attempt < attempts:
                wait = retry.delay(attempt)
                warn(
                    f"Hub request for {ctx.ref} failed ({_short(exc)}); retrying in {wait:g}s "
                    f"(attempt {attempt + 1}/{attempts})"
                )
                time.sleep(wait)
                continue
            if _is_connect_failure(exc):
                _UNREACHABLE[url] = time.monotonic() + UNREACHABLE_FOR_S
            err = translate(exc, ctx, attempts=attempt)
            if err is None:
                raise
            raise err from exc
