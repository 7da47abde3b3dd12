"""A local stand-in for the Hugging Face Hub, for tests.

A stdlib ``http.server`` in a thread on 127.0.0.1 (ephemeral port) that speaks the few endpoints
the real ``huggingface_hub`` client uses for what expo-batch does, serving tiny models from memory:

- ``GET /api/models/{repo}[/revision/{rev}]``: model info (``sha``, sized ``siblings``, ``gated``)
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: tree listing (``snapshot_download``)
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: file metadata and bytes, with ``X-Repo-Commit``,
  ``ETag``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS-like files and ``Range`` support
  (safetensors headers are read with range requests). No Xet headers, so downloads use plain HTTP.
- the same for dataset repos (``add_dataset``): ``/api/datasets/{repo}[/revision/{rev}]``,
  ``/api/datasets/{repo}/tree/{rev}`` and ``/datasets/{repo}/resolve/{rev}/{file}`` (what
  ``dataset_info``, ``snapshot_download`` and ``hf_hub_download`` with ``repo_type="dataset"`` ask).
- ``POST /api/repos/create``, ``/api/models/{repo}/preupload/{rev}`` (always "regular", no LFS),
  ``/api/models/{repo}/commit/{rev}`` (ndjson) and ``/api/validate-yaml``: what uploads need.

It can simulate gated repos (401/403 with ``X-Error-Code: GatedRepo``), unknown repos and revisions
(404 with ``RepoNotFound`` / ``RevisionNotFound``), rejected tokens, and flaky service (N answers of
5xx, or dropped connections). Every request is logged so a test can prove what was (not) fetched.

Fixtures (load them in a test module with ``pytest_plugins = ("tests.hubserver",)``):

- ``hub_env``: an isolated Hugging Face environment (temp ``HF_HOME``/cache, no token, online);
  ``hub_env.set_offline()`` turns HF_HUB_OFFLINE on.
- ``fake_hub``: a started :class:`FakeHub` with ``HF_ENDPOINT`` pointing at it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
LFS_SUFFIXES = (*WEIGHT_SUFFIXES, ".parquet")  # stored with LFS on the real Hub


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str = ""


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str = "model"
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    gated: bool = False
    granted: set[str] = field(default_factory=set)  # tokens accepted for a gated repo
    private: bool = False
    n_commits_pushed: int = 0

    def resolve(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        if rev in self.commits:
            return rev
        return None


@dataclass
class Request:
    method: str
    path: str  # unquoted path, no query
    range: str | None
    status: int
    bytes_sent: int
    authorized: bool


@dataclass
class _Failure:
    remaining: int
    kind: str  # "drop" or a status code as text
    pattern: re.Pattern


class FakeHub:
    """The server state plus start/stop. Use as a context manager or through ``fake_hub``."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}  # model repos
        self.datasets: dict[str, FakeRepo] = {}  # dataset repos
        self.requests: list[Request] = []
        self.valid_tokens: set[str] | None = None  # None: any token is a valid login
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.unhandled: list[str] = []

    # ---- content ------------------------------------------------------------------------
    def store(self, repo_type: str = "model") -> dict[str, FakeRepo]:
        """The repos of one type: ``repos`` for models, ``datasets`` for datasets."""
        return {"model": self.repos, "dataset": self.datasets}[repo_type]

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | Path,
        *,
        gated: bool = False,
        granted: set[str] | None = None,
        branch: str = "main",
        tags: tuple[str, ...] = (),
        repo_type: str = "model",
    ) -> str:
        """Add a repo (or a commit to it) holding ``files`` (dict or folder); returns the SHA."""
        repo = self.store(repo_type).setdefault(repo_id, FakeRepo(repo_id, repo_type))
        repo.gated = gated or repo.gated
        repo.granted |= set(granted or ())
        sha = self.add_commit(
            repo_id, _as_files(files), branch=branch, message="initial", repo_type=repo_type
        )
        for t in tags:
            repo.refs[t] = sha
        return sha

    def add_dataset(self, repo_id: str, files: dict[str, bytes] | Path, **kw) -> str:
        """Add a dataset repo (or a commit to it); same options as :meth:`add_repo`."""
        return self.add_repo(repo_id, files, repo_type="dataset", **kw)

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        branch: str = "main",
        message: str = "",
        repo_type: str = "model",
    ) -> str:
        repo = self.store(repo_type)[repo_id]
        h = hashlib.sha1(repo_id.encode() + b"\0" + message.encode())
        if branch in repo.refs:
            h.update(repo.refs[branch].encode())
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        sha = h.hexdigest()
        repo.commits[sha] = Commit(sha, dict(files), message)
        repo.refs[branch] = sha
        return sha

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> Commit:
        repo = self.store(repo_type)[repo_id]
        return repo.commits[repo.refs[branch]]

    # ---- failure injection ----------------------------------------------------------------
    def fail(self, n: int, *, status: int | str = 503, path: str = r".*") -> None:
        """Answer the next ``n`` requests whose path matches regex ``path`` with ``status``
        (an HTTP code) or ``"drop"`` (close the connection without an answer)."""
        with self._lock:
            self._failures.append(_Failure(n, str(status), re.compile(path)))

    def _take_failure(self, path: str) -> str | None:
        with self._lock:
            for f in self._failures:
                if f.remaining > 0 and f.pattern.search(path):
                    f.remaining -= 1
                    return f.kind
        return None

    # ---- request log ----------------------------------------------------------------------
    def count(self, path_regex: str = r".*", method: str | None = None) -> int:
        rx = re.compile(path_regex)
        return sum(
            1 for r in self.requests if rx.search(r.path) and (method is None or r.method == method)
        )

    def weight_requests(self) -> list[Request]:
        """GET requests for weight files (``.safetensors``/``.bin``...) under ``/resolve/``."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and "/resolve/" in r.path and r.path.endswith(WEIGHT_SUFFIXES)
        ]

    def weight_bytes_served(self) -> int:
        return sum(r.bytes_sent for r in self.weight_requests())

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _as_files(files: dict[str, bytes] | Path) -> dict[str, bytes]:
    if isinstance(files, dict):
        return dict(files)
    root = Path(files)
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


# URL segment after /api/ -> repo type
_API_TYPES = {"models": "model", "datasets": "dataset"}


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # ---- plumbing -------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def _log(self, status: int, sent: int) -> None:
        with self.hub._lock:
            self.hub.requests.append(
                Request(
                    self.command,
                    unquote(urlsplit(self.path).path),
                    self.headers.get("Range"),
                    status,
                    sent,
                    self._token() is not None,
                )
            )

    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype=None
    ) -> None:
        # logged before answering: once the client has its answer, a test may read the log
        self._log(status, 0 if self.command == "HEAD" else len(body))
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers, "application/json")

    def _error(self, status: int, code: str | None, message: str, extra=None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        path = urlsplit(self.path).path
        # always drain a request body, also before a simulated failure
        body = self._body() if self.command == "POST" else b""
        failure = self.hub._take_failure(unquote(path))
        if failure == "drop":
            self._log(0, 0)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        if failure is not None:
            self._error(int(failure), None, "simulated failure")
            return
        token = self._token()
        if (
            token is not None
            and self.hub.valid_tokens is not None
            and token not in self.hub.valid_tokens
        ):
            self._error(401, None, "Invalid credentials in Authorization header")
            return
        try:
            self._route(path, body)
        except Exception as e:  # a bug in the stand-in: make it loud in the test
            self.hub.unhandled.append(f"{self.command} {path}: {e!r}")
            self._error(500, None, f"fake hub error: {e!r}")

    do_GET = do_HEAD = do_POST = _handle

    # ---- routing --------------------------------------------------------------------------
    def _route(self, path: str, body: bytes) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        query = parse_qs(urlsplit(self.path).query)
        if self.command == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"))
        if self.command == "POST" and parts == ["api", "validate-yaml"]:
            return self._json(200, {"errors": [], "warnings": []})
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in _API_TYPES:
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            repo = self._repo_or_404(repo_id, _API_TYPES[parts[1]])
            if repo is None:
                return
            if self.command == "GET" and not rest:
                return self._repo_info(repo, "main")
            if self.command == "GET" and rest[0] == "revision" and len(rest) == 2:
                return self._repo_info(repo, rest[1])
            if self.command == "GET" and rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, rest[1], "/".join(rest[2:]), query)
            if self.command == "POST" and rest[0] == "preupload" and len(rest) == 2:
                return self._preupload(repo, rest[1], json.loads(body))
            if self.command == "POST" and rest[0] == "commit" and len(rest) == 2:
                return self._commit(repo, rest[1], body)
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            if self.command in ("GET", "HEAD"):
                repo = self._repo_or_404(f"{parts[1]}/{parts[2]}", "dataset")
                if repo is None:
                    return
                return self._resolve(repo, parts[4], "/".join(parts[5:]))
        elif len(parts) >= 5 and parts[2] == "resolve" and self.command in ("GET", "HEAD"):
            repo = self._repo_or_404(f"{parts[0]}/{parts[1]}")
            if repo is None:
                return
            return self._resolve(repo, parts[3], "/".join(parts[4:]))
        self.hub.unhandled.append(f"{self.command} {path}")
        self._error(404, None, f"fake hub: no route for {self.command} {path}")

    def _repo_or_404(self, repo_id: str, repo_type: str = "model") -> FakeRepo | None:
        repo = self.hub.store(repo_type).get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _sha_or_404(self, repo: FakeRepo, rev: str) -> str | None:
        sha = repo.resolve(rev)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    def _repo_info(self, repo: FakeRepo, rev: str) -> None:
        sha = self._sha_or_404(repo, rev)
        if sha is None:
            return
        files = repo.commits[sha].files
        siblings = []
        for name, data in sorted(files.items()):
            sib = {"rfilename": name, "size": len(data), "blobId": git_blob_oid(data)}
            if is_lfs(name):
                sib["lfs"] = {
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            siblings.append(sib)
        info = {
            "_id": repo.repo_id,
            "id": repo.repo_id,
            "sha": sha,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
            "lastModified": "2024-01-01T00:00:00.000Z",
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        self._json(200, info)

    def _tree(self, repo: FakeRepo, rev: str, sub: str, query) -> None:
        sha = self._sha_or_404(repo, rev)
        if sha is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{sub}/" if sub else ""
        entries, dirs = [], set()
        for name, data in sorted(repo.commits[sha].files.items()):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            if "/" in rel:
                dirs.add(prefix + rel.split("/")[0])
                if not recursive:
                    continue
            entry = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": name}
            if is_lfs(name):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        entries += [
            {"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)
        ]
        self._json(200, entries)

    def _resolve(self, repo: FakeRepo, rev: str, name: str) -> None:
        sha = self._sha_or_404(repo, rev)
        if sha is None:
            return
        token = self._token()
        if repo.gated and token not in repo.granted:
            if token is None:
                msg = (
                    f"Access to {repo.repo_type} {repo.repo_id} is restricted. You must have "
                    "access to it and be authenticated to access it. Please log in."
                )
                return self._error(401, "GatedRepo", msg)
            msg = (
                f"Access to {repo.repo_type} {repo.repo_id} is restricted and you are not in the "
                f"authorized list. Visit the {repo.repo_type} page to ask for access."
            )
            return self._error(403, "GatedRepo", msg)
        files = repo.commits[sha].files
        if name not in files:
            return self._error(
                404, "EntryNotFound", f"{name} does not exist", {"X-Repo-Commit": sha}
            )
        data = files[name]
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if is_lfs(name):
            digest = hashlib.sha256(data).hexdigest()
            headers.update(
                {
                    "ETag": f'"{digest}"',
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                }
            )
        else:
            headers["ETag"] = f'"{git_blob_oid(data)}"'
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and self.command == "GET":
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self._error(416, None, "Range Not Satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

    # ---- uploads ----------------------------------------------------------------------------
    def _require_login(self) -> bool:
        if self._token() is None:
            self._error(401, None, "You must be authenticated to do this (set a token)")
            return False
        return True

    def _create_repo(self, payload: dict) -> None:
        if not self._require_login():
            return
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            msg = "You already created this model repo"
            return self._json(409, {"error": msg, "url": url}, {"X-Error-Message": msg})
        self.hub.repos[repo_id] = FakeRepo(repo_id, private=bool(payload.get("private")))
        self.hub.add_commit(
            repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"}, message="init"
        )
        self._json(200, {"url": url, "name": repo_id})

    def _preupload(self, repo: FakeRepo, rev: str, payload: dict) -> None:
        if not self._require_login():
            return
        sha = repo.resolve(rev)
        files = repo.commits[sha].files if sha else {}
        out = []
        for f in payload["files"]:
            existing = files.get(f["path"])
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        self._json(200, {"files": out, "commitOid": sha})

    def _commit(self, repo: FakeRepo, rev: str, body: bytes) -> None:
        if not self._require_login():
            return
        parent = repo.resolve(rev)
        files = dict(repo.commits[parent].files) if parent else {}
        message = ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                return self._error(400, None, f"fake hub does not support {key!r} operations")
        sha = self.hub.add_commit(
            repo.repo_id, files, branch=rev, message=message, repo_type=repo.repo_type
        )
        repo.n_commits_pushed += 1
        self._json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{sha}",
                "pullRequestUrl": None,
            },
        )


# ---- fixtures -------------------------------------------------------------------------------


@dataclass
class HubEnv:
    home: Path
    cache: Path
    monkeypatch: pytest.MonkeyPatch

    def set_offline(self, offline: bool = True) -> None:
        """Switch HF_HUB_OFFLINE on (or off) the way a user's environment would."""
        set_offline(self.monkeypatch, offline)


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> HubEnv:
    """An isolated Hugging Face environment: a fresh HF_HOME and cache, no token, online.

    huggingface_hub reads its environment into ``constants`` at import, so the values are patched
    there as well as in the environment (for child processes).
    """
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(home / "xet"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # quick, deterministic retries for the tool's own backoff
    monkeypatch.setenv("EXPO_HUB_RETRIES", "3")
    monkeypatch.setenv("EXPO_HUB_RETRY_DELAY", "0.01")
    with contextlib.suppress(ImportError):
        from expo_batch.hub._errors import reset_unreachable

        reset_unreachable()
    return HubEnv(home, cache, monkeypatch)


def set_offline(monkeypatch, offline: bool = True) -> None:
    """Switch HF_HUB_OFFLINE on (or off) the way a user's environment would."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def fake_hub(hub_env, monkeypatch):
    """A started :class:`FakeHub`; ``HF_ENDPOINT`` points at it for the duration of the test."""
    from huggingface_hub.utils import _http

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
    # the shared httpx client keeps pooled connections to this (now closed) server
    _http.close_session()
