"""A small Hugging Face Hub-compatible HTTP server on loopback, for tests.

It implements just what ``huggingface_hub`` 2.4's ``HfApi`` calls for our store:

- ``POST /api/repos/create`` (409 with ``url`` in the body when the repo exists,
  which ``create_repo(exist_ok=True)`` needs),
- ``GET /api/models/{repo}[/revision/{rev}]`` (``model_info``: ``id``, ``sha``, ...;
  with ``expand=...`` only those fields, as the Hub answers ``model_info(expand=)``),
- ``POST /api/models/{repo}/preupload/{rev}`` (every file answered ``regular``, so
  content goes inline and no LFS/Xet upload happens),
- ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: a ``header`` line, then
  ``file`` lines with base64 content; ``parentCommit`` must be the head, else 412,
  as the real Hub answers),
- ``GET /api/models/{repo}/commits/{rev}`` (``list_repo_commits``, newest first),
- ``POST /api/models/{repo}/paths-info/{rev}`` (``get_paths_info``: form fields
  ``paths`` (repeated) and ``expand``; each existing file's ``oid`` (git blob id),
  ``size`` and, expanded, its ``lastCommit`` at that revision; unknown paths are
  left out, as the Hub does),
- ``GET``/``HEAD /{repo}/resolve/{rev}/{path}`` (downloads, with ``ETag``,
  ``X-Repo-Commit`` and ``Content-Length``),
- ``POST /api/validate-yaml`` (what ``create_commit`` asks before committing a root
  ``README.md``: 400 with ``errors`` when its YAML front matter is not a mapping).

Every request needs ``Authorization: Bearer <token>``; otherwise 401. ``requests``
records each request's method and path, so a test can count what a lookup costs;
:meth:`HubServer.push_commit` seeds a repo directly (one commit of any size). Like the Hub,
a new repo starts with a system "initial commit" holding ``.gitattributes``.

Fault injection (thread-safe, consumed in order by matching requests):
``fail_next(n, status)``, ``hang_next(n, seconds)`` and ``before_next(fn)`` (run a
callback, e.g. :meth:`HubServer.push_commit`, just before a request is handled).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


@dataclass(frozen=True)
class Commit:
    oid: str
    title: str
    description: str
    files: dict[str, bytes]  # full snapshot of the tree after this commit
    date: str
    author: str
    changed: frozenset[str] = frozenset()  # the paths this commit wrote


@dataclass
class _Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)  # oldest first


@dataclass
class _Fault:
    kind: str  # "status" | "hang" | "call"
    remaining: int
    path_contains: str | None
    status: int = 503
    seconds: float = 0.0
    retry_after: int | None = None
    after: bool = False
    callback: Callable[[], object] | None = None


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class HubServer:
    """In-memory Hub: repos -> commits (each with a full file snapshot)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or f"hf_test_{secrets.token_hex(16)}"
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._faults: list[_Fault] = []
        self._counter = itertools.count(1)
        self._stopping = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen
        self.statuses: list[int] = []  # the status of every answer sent, in order
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wake hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- fault injection -------------------------------------------------------------
    def fail_next(
        self,
        n: int,
        status: int,
        *,
        path_contains: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``n`` (matching) requests with ``status``."""
        self._add_fault(_Fault("status", n, path_contains, status=status, retry_after=retry_after))

    def hang_next(
        self, n: int, seconds: float, *, path_contains: str | None = None, after: bool = False
    ) -> None:
        """Stall the next ``n`` (matching) requests for ``seconds``, then serve them.

        With ``after=True`` the request is applied first and only the answer is
        late: a client that times out never learns that, say, its commit landed.
        """
        self._add_fault(_Fault("hang", n, path_contains, seconds=seconds, after=after))

    def before_next(
        self, callback: Callable[[], object], *, path_contains: str | None = None
    ) -> None:
        """Run ``callback`` once, just before handling the next (matching) request."""
        self._add_fault(_Fault("call", 1, path_contains, callback=callback))

    def pending_faults(self) -> int:
        """Injected faults not yet served (0: every one hit a client request)."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains is None or fault.path_contains in path:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- inspection and out-of-band writes -------------------------------------------
    def commits(self, repo_id: str) -> list[Commit]:
        """All commits of ``repo_id``, newest first (the initial commit last)."""
        with self._lock:
            repo = self._repos.get(repo_id)
            return list(reversed(repo.commits)) if repo else []

    def user_commits(self, repo_id: str) -> list[Commit]:
        """Like :meth:`commits` without the system initial commit."""
        return [c for c in self.commits(repo_id) if c.author != "system"]

    def create_repo(self, repo_id: str, *, private: bool = True) -> None:
        with self._lock:
            self._create_repo_locked(repo_id, private)

    def push_commit(self, repo_id: str, files: dict[str, bytes], title: str) -> str:
        """Commit directly, as another writer would; returns the new oid."""
        with self._lock:
            repo = self._repos[repo_id]
            return self._commit_locked(repo, files, title, "", author="someone-else")

    # -- state changes (call with the lock held) -------------------------------------
    def _create_repo_locked(self, repo_id: str, private: bool) -> bool:
        if repo_id in self._repos:
            return False
        repo = _Repo(repo_id, private)
        self._repos[repo_id] = repo
        self._commit_locked(
            repo, {".gitattributes": _GITATTRIBUTES}, "initial commit", "", author="system"
        )
        return True

    def _commit_locked(
        self, repo: _Repo, changes: dict[str, bytes], title: str, description: str, author: str
    ) -> str:
        parent = repo.commits[-1] if repo.commits else None
        files = dict(parent.files) if parent else {}
        files.update(changes)
        material = json.dumps(
            [parent.oid if parent else "", next(self._counter), title, sorted(changes)]
        ).encode()
        oid = hashlib.sha1(material, usedforsecurity=False).hexdigest()
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        repo.commits.append(
            Commit(oid, title, description, files, date, author, frozenset(changes))
        )
        return oid

    def _last_commit_locked(self, repo: _Repo, index: int, path: str) -> Commit:
        """The newest commit at or before ``index`` that wrote ``path``."""
        for commit in reversed(repo.commits[: index + 1]):
            if path in commit.changed:
                return commit
        raise AssertionError(f"{path} exists but no commit wrote it")  # pragma: no cover

    def _resolve_locked(self, repo: _Repo, revision: str) -> tuple[int, Commit]:
        if revision == "main":
            return len(repo.commits) - 1, repo.commits[-1]
        rev = revision.lower()
        if 7 <= len(rev) <= 40 and all(c in "0123456789abcdef" for c in rev):
            matches = [(i, c) for i, c in enumerate(repo.commits) if c.oid.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise _HttpError(404, "Invalid rev id", {"X-Error-Code": "RevisionNotFound"})

    def _repo_locked(self, repo_id: str) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise _HttpError(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
        return repo


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        hub = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "slaops-test-hub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return  # keep test output clean

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing --------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        raw_path = urlsplit(self.path).path
        body = self._read_body()
        hub = self.hub
        with hub._lock:
            hub.requests.append((method, raw_path))
        try:
            late: float | None = None
            while (fault := hub._take_fault(raw_path)) is not None:
                if fault.kind == "call" and fault.callback is not None:
                    fault.callback()
                    continue
                if fault.kind == "hang" and fault.after:
                    late = fault.seconds
                    break
                if fault.kind == "hang":
                    if hub._stopping.wait(fault.seconds):
                        return
                    break
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(fault.retry_after)
                raise _HttpError(fault.status, "injected failure", headers)
            if not self._authorized():
                return
            status, headers, payload = self._route(method, raw_path, body)
            if late is not None and hub._stopping.wait(late):
                return
            self._send(status, headers, payload, head=method == "HEAD")
        except _HttpError as err:
            payload = json.dumps({"error": err.message}).encode()
            headers = {"Content-Type": "application/json", **err.headers}
            self._send(err.status, headers, payload, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization")
        if auth == f"Bearer {self.hub.token}":
            return True
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["X-Error-Message"] = "Invalid credentials in Authorization header"
        self._send(401, headers, b'{"error": "Invalid username or password."}')
        return False

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, headers: dict[str, str], payload: bytes, *, head: bool = False
    ) -> None:
        with self.hub._lock:
            self.hub.statuses.append(status)
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not head:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- routes ----------------------------------------------------------------------
    def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = path.split("/")[1:]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(body)
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(body)
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
            rest = parts[4:]
            if method == "GET" and not rest:
                return self._model_info(repo_id, "main")
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._model_info(repo_id, unquote(rest[1]))
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_id, unquote(rest[1]), body)
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_id, unquote(rest[1]), body)
            if method == "GET" and len(rest) == 2 and rest[0] == "commits":
                return self._list_commits(repo_id, unquote(rest[1]))
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self._paths_info(repo_id, unquote(rest[1]), body)
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            return self._resolve(repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
        raise _HttpError(404, f"no route for {method} {path}")

    def _json(
        self, obj: Any, status: int = 200, *, extra: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        body = {**obj, **extra} if extra else obj
        return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _validate_yaml(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        content = str(json.loads(body or b"{}").get("content", ""))
        if not content.startswith("---\n"):
            return self._json({"errors": [], "warnings": [{"message": "empty metadata"}]})
        head = content[4:].split("\n---\n", 1)[0]
        try:
            meta = yaml.safe_load(head)
        except yaml.YAMLError as exc:
            return self._json({"errors": [{"message": f"invalid YAML: {exc}"}]}, 400)
        if not isinstance(meta, dict):
            return self._json({"errors": [{"message": "metadata must be a mapping"}]}, 400)
        return self._json({"errors": [], "warnings": []})

    def _create_repo(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        payload = json.loads(body or b"{}")
        if payload.get("type") not in (None, "model"):
            raise _HttpError(400, "only model repos are supported")
        name, org = payload.get("name"), payload.get("organization")
        if not name or not org:
            raise _HttpError(400, "name and organization are required")
        repo_id = f"{org}/{name}"
        private = payload.get("visibility") == "private" or payload.get("private") is True
        with self.hub._lock:
            created = self.hub._create_repo_locked(repo_id, private)
        url = f"{self.hub.endpoint}/{repo_id}"
        if not created:
            return self._json({"error": "You already created this model repo", "url": url}, 409)
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _model_info(self, repo_id: str, revision: str) -> tuple[int, dict[str, str], bytes]:
        expand = parse_qs(urlsplit(self.path).query).get("expand")
        with self.hub._lock:
            repo = self.hub._repo_locked(repo_id)
            _, commit = self.hub._resolve_locked(repo, revision)
            private = repo.private
            # Like the Hub: every sibling by default, only the fields asked for with expand.
            siblings = None if expand and "siblings" not in expand else sorted(commit.files)
        info: dict[str, Any] = {
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "private": private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": name} for name in siblings or ()],
        }
        if expand:
            info = {name: value for name, value in info.items() if name in expand}
        ids = {
            "id": repo_id,
            "_id": hashlib.sha1(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
        }
        return self._json(ids if expand else {**ids, "modelId": repo_id}, extra=info)

    def _preupload(self, repo_id: str, revision: str, body: bytes) -> tuple[int, dict, bytes]:
        payload = json.loads(body)
        with self.hub._lock:
            repo = self.hub._repo_locked(repo_id)
            _, head = self.hub._resolve_locked(repo, revision)
        files = [
            # "regular": content goes inline in the commit (no LFS/Xet round trip).
            # No "oid": the client then never drops files as unchanged no-ops.
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            for f in payload["files"]
        ]
        return self._json({"files": files, "commitOid": head.oid})

    def _commit(self, repo_id: str, revision: str, body: bytes) -> tuple[int, dict, bytes]:
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-ndjson":
            raise _HttpError(400, "expected application/x-ndjson")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "first line must be the header")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title:
            raise _HttpError(400, "summary is required")
        changes: dict[str, bytes] = {}
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key != "file" or value.get("encoding") != "base64":
                raise _HttpError(400, f"unsupported commit operation {key!r}")
            path = value["path"]
            if path.startswith("/") or ".." in path.split("/") or "\\" in path:
                raise _HttpError(400, f"invalid path {path!r}")
            changes[path] = base64.b64decode(value["content"], validate=True)
        with self.hub._lock:
            repo = self.hub._repo_locked(repo_id)
            if revision != "main":
                raise _HttpError(400, "only commits to main are supported")
            head = repo.commits[-1]
            parent = header.get("parentCommit")
            if parent is not None and not head.oid.startswith(str(parent).lower()):
                raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
            oid = self.hub._commit_locked(
                repo, changes, title, header.get("description") or "", author="test-user"
            )
        return self._json(
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{oid}",
                "pullRequestUrl": None,
            }
        )

    def _list_commits(self, repo_id: str, revision: str) -> tuple[int, dict, bytes]:
        with self.hub._lock:
            repo = self.hub._repo_locked(repo_id)
            index, _ = self.hub._resolve_locked(repo, revision)
            history = list(reversed(repo.commits[: index + 1]))
        return self._json(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": f"\n\n{c.description}" if c.description else "",
                    "authors": [{"user": c.author}],
                    "date": c.date,
                }
                for c in history
            ]
        )

    def _paths_info(self, repo_id: str, revision: str, body: bytes) -> tuple[int, dict, bytes]:
        content_type = self.headers.get("Content-Type", "").split(";")[0]
        if content_type != "application/x-www-form-urlencoded":
            raise _HttpError(400, "expected a form")
        form = parse_qs(body.decode(), keep_blank_values=True)
        paths = form.get("paths", [])
        expand = form.get("expand", ["false"])[-1].lower() in ("true", "1")
        if not paths:
            raise _HttpError(400, "paths is required")
        answer = []
        with self.hub._lock:
            repo = self.hub._repo_locked(repo_id)
            index, commit = self.hub._resolve_locked(repo, revision)
            for path in dict.fromkeys(paths):
                content = commit.files.get(path)
                if content is None:
                    continue
                item: dict[str, Any] = {
                    "type": "file",
                    "oid": _blob_id(content),
                    "size": len(content),
                    "path": path,
                }
                if expand:
                    last = self.hub._last_commit_locked(repo, index, path)
                    item["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
                    item["securityFileStatus"] = {
                        "status": "unscanned",
                        "avScan": {"virusFound": False},
                        "pickleImportScan": None,
                    }
                answer.append(item)
        return self._json(answer)

    def _resolve(self, repo_id: str, revision: str, filename: str) -> tuple[int, dict, bytes]:
        with self.hub._lock:
            repo = self.hub._repo_locked(repo_id)
            _, commit = self.hub._resolve_locked(repo, revision)
            content = commit.files.get(filename)
        if content is None:
            raise _HttpError(
                404,
                "Entry not found",
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit.oid},
            )
        return (
            200,
            {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{_blob_id(content)}"',
                "X-Repo-Commit": commit.oid,
                "Accept-Ranges": "none",
            },
            content,
        )


def _blob_id(content: bytes) -> str:
    """The git blob id of ``content`` (what the Hub calls a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


@contextmanager
def running_hub_server(token: str | None = None) -> Iterator[HubServer]:
    """Start a :class:`HubServer` on ``127.0.0.1:<random port>`` for the block."""
    server = HubServer(token).start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["Commit", "HubServer", "running_hub_server"]
