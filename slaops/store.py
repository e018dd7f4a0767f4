"""The model store: where published model files live, chosen by URI.

``hf://OWNER/REPO`` -> :class:`HubStore` (Hugging Face Hub through an injected
``HfApi``); ``file://DIR`` -> :class:`FileStore` (the embedded default). Both keep
the same layout, one atomic version per publish::

    sla_models/{tenant_hash}_sla_model.safetensors   kind "safetensors"
    sla_models/{tenant_hash}_sla_model.pt            kind "pt"
    sla_models/{tenant_hash}_sla_model.json          kind "card"

FileStore on disk (``DIR``)::

    sla_models/...                      mirror of each tenant's newest version, for
                                        humans and tools; the API never reads it
    .revisions/{tenant_hash}/HEAD       newest revision id, replaced atomically LAST:
                                        this is the commit point
    .revisions/{tenant_hash}/{rev}/     immutable copy of one version: the three
                                        files + meta.json (message, parent revision)
    .revisions/{tenant_hash}/.lock      flock held while publishing

A version directory is written under a temporary name, fsynced, then renamed, and
only then does HEAD move, so a reader never sees a card without its weights.

HubStore: one ``create_commit`` per publish with all three files and
``parent_commit`` = the head read just before (the Hub answers 412 if it moved:
:class:`StoreConflict`, the caller may simply publish again). The commit title is
the caller's message; the description carries ``slaops-tenant:`` and
``slaops-publish:`` trailers, which is how :meth:`HubStore.latest` and
:meth:`HubStore.revision_messages` find a tenant's versions in the commit list, and
how a retry after a lost response recognises that its commit already landed.
Transient failures (429, 5xx, connection errors, timeouts) are retried with capped,
jittered exponential backoff; then :class:`StoreUnavailable`. Note that
``huggingface_hub`` itself retries some calls (preupload, commit listing,
download metadata) with real sleeps before our own retry loop sees an error.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi, set_client_factory
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._http import default_client_factory
from pydantic import SecretStr

logger = logging.getLogger(__name__)

MODEL_DIR = "sla_models"
KINDS: dict[str, str] = {"safetensors": "safetensors", "pt": "pt", "card": "json"}  # kind -> ext
MAX_MESSAGE_LEN = 1000
_TENANT_HASH_RE = re.compile(r"[0-9a-f]{64}")
_REPO_PATH_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_MODEL_PATH_RE = re.compile(rf"{MODEL_DIR}/([0-9a-f]{{64}})_sla_model\.(safetensors|pt|json)")
_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE_REVISION_RE = re.compile(r"[0-9a-f]{40}")
_REPO_PART_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_URI_SCHEME_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
_URI_FORBIDDEN = set(";|&$`<>\"'\\*?#%{}[]!^~()@:")
_TENANT_TRAILER = "slaops-tenant"
_PUBLISH_TRAILER = "slaops-publish"
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
T = TypeVar("T")


class StoreError(Exception):
    """Root of the model store errors."""


class StoreConflict(StoreError):
    """The store moved between reading its head and committing (parent_commit)."""


class StoreUnavailable(StoreError, ConnectionError):
    """Transient failure (429, 5xx, connection, timeout) that outlived the retries."""


class StoreNotFound(StoreError, LookupError):
    """No such repository, revision or file."""


@dataclass(frozen=True)
class PublishedFiles:
    revision: str
    paths: dict[str, str]  # kind -> path in the store


class ModelStore(Protocol):
    uri: str

    def publish(
        self, tenant_hash: str, files: Mapping[str, bytes], *, message: str
    ) -> PublishedFiles: ...

    def read(self, path: str, *, revision: str) -> bytes: ...

    def latest(self, tenant_hash: str) -> PublishedFiles | None: ...

    def revision_messages(self, tenant_hash: str) -> list[str]: ...


def model_paths(tenant_hash: str) -> dict[str, str]:
    """kind -> ``sla_models/{tenant_hash}_sla_model.{ext}``."""
    _check_tenant_hash(tenant_hash)
    return {kind: f"{MODEL_DIR}/{tenant_hash}_sla_model.{ext}" for kind, ext in KINDS.items()}


def open_store(
    uri: str,
    *,
    hf_api: HfApi | None = None,
    token: SecretStr | None = None,
    endpoint: str | None = None,
    private: bool = True,
    max_attempts: int = 5,
    backoff_s: float = 0.5,
    max_backoff_s: float = 8.0,
    http_timeout_s: float | None = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ModelStore:
    """Build the store a URI names: ``file://DIR`` or ``hf://OWNER/REPO``.

    For ``hf://`` the token and endpoint go to ``HfApi`` only (``None`` leaves
    huggingface_hub's own defaults); ``http_timeout_s`` bounds every
    huggingface_hub request process-wide (see :func:`configure_hub_http`).
    Raises ``ValueError`` for anything else, without echoing credentials.
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError("model store URI must be a non-empty string")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ValueError("model store URI must look like file://DIR or hf://OWNER/REPO")
    if "@" in rest:
        raise ValueError(
            "model store URI must not embed credentials (user:token@...); "
            "pass the token separately (HF_TOKEN / settings)"
        )
    if _URI_SCHEME_RE.fullmatch(scheme) is None:
        raise ValueError("unsupported model store scheme: use file:// or hf://")
    bad = sorted({c for c in rest if c in _URI_FORBIDDEN or c.isspace() or not c.isprintable()})
    if bad:
        raise ValueError(f"model store URI contains forbidden character(s): {bad!r}")
    if scheme == "file":
        if not rest or ".." in rest.split("/"):
            raise ValueError("file:// store URI needs a directory without '..' segments")
        return FileStore(Path(rest))
    if scheme == "hf":
        repo_id = rest
        _check_repo_id(repo_id)
        if hf_api is None:
            if endpoint is not None:
                _check_endpoint(endpoint)
            secret = token.get_secret_value() if token is not None else None
            hf_api = HfApi(endpoint=endpoint, token=secret, library_name="slaops")
        elif token is not None or endpoint is not None:
            raise ValueError("pass either hf_api or token/endpoint, not both")
        if http_timeout_s is not None:
            configure_hub_http(http_timeout_s)
        return HubStore(
            hf_api,
            repo_id,
            private=private,
            max_attempts=max_attempts,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            sleep=sleep,
            request_timeout_s=http_timeout_s,
        )
    raise ValueError(f"unsupported model store scheme {scheme!r}: use file:// or hf://")


_http_lock = threading.Lock()
_http_timeout_s: float | None = None


def configure_hub_http(timeout_s: float) -> None:
    """Bound every huggingface_hub HTTP request to ``timeout_s`` (process-wide).

    huggingface_hub shares one httpx client with no timeout, and some calls
    (``create_commit``, ``create_repo``) take no timeout argument, so a stalled Hub
    would block a publish forever. This installs a client factory whose requests
    get ``timeout_s`` wherever the library left a timeout unset. Call it once at
    start-up; changing the value replaces the shared client.
    """
    if not timeout_s > 0:
        raise ValueError("timeout_s must be > 0")
    global _http_timeout_s
    with _http_lock:
        if _http_timeout_s == timeout_s:
            return

        def bound(request: httpx2.Request) -> None:
            timeouts = request.extensions.get("timeout")
            if isinstance(timeouts, dict) and None in timeouts.values():
                request.extensions["timeout"] = {
                    name: timeout_s if value is None else value for name, value in timeouts.items()
                }

        def factory() -> httpx2.Client:
            # The library's own client (event hooks, redirects, proxies), plus bounds.
            client = default_client_factory()
            client.timeout = httpx2.Timeout(timeout_s)
            hooks = client.event_hooks
            client.event_hooks = {
                "request": [*hooks["request"], bound],
                "response": list(hooks["response"]),
            }
            return client

        set_client_factory(factory)
        _http_timeout_s = timeout_s


class FileStore:
    """Versioned local store; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.uri = f"file://{self.root}"

    def publish(
        self, tenant_hash: str, files: Mapping[str, bytes], *, message: str
    ) -> PublishedFiles:
        paths = model_paths(tenant_hash)
        _check_files(files)
        _check_message(message)
        tenant_dir = self.root / ".revisions" / tenant_hash
        try:
            tenant_dir.mkdir(parents=True, exist_ok=True)
            with _flock(tenant_dir / ".lock"):
                parent = self._head(tenant_hash)
                revision = secrets.token_hex(20)
                staging = tenant_dir / f".tmp-{revision}"
                staging.mkdir()
                try:
                    for kind, path in paths.items():
                        _write_durable(staging / Path(path).name, bytes(files[kind]))
                    meta = {
                        "revision": revision,
                        "parent": parent,
                        "message": message,
                        "paths": paths,
                        "created_at": datetime.now(UTC).isoformat(),
                    }
                    _write_durable(staging / "meta.json", json.dumps(meta).encode())
                    _fsync_dir(staging)
                    os.rename(staging, tenant_dir / revision)
                    _fsync_dir(tenant_dir)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                _atomic_write(tenant_dir / "HEAD", f"{revision}\n".encode())  # commit point
                (self.root / MODEL_DIR).mkdir(exist_ok=True)
                for kind, path in paths.items():  # convenience mirror, after the commit
                    _atomic_write(self.root / path, bytes(files[kind]))
        except OSError as exc:
            raise StoreError(f"could not publish to {self.uri}: {exc.strerror or exc}") from exc
        logger.info(
            "published tenant_hash=%s revision=%s store=%s", tenant_hash, revision, self.uri
        )
        return PublishedFiles(revision, paths)

    def read(self, path: str, *, revision: str) -> bytes:
        _check_repo_path(path)
        _check_revision(revision)
        match = _MODEL_PATH_RE.fullmatch(path)
        if match is None or _FILE_REVISION_RE.fullmatch(revision) is None:
            raise StoreNotFound(f"no {path} at revision {revision} in {self.uri}")
        version_dir = self.root / ".revisions" / match.group(1) / revision
        try:
            if not (version_dir / "meta.json").is_file():
                raise FileNotFoundError(revision)
            return (version_dir / Path(path).name).read_bytes()
        except FileNotFoundError as exc:
            raise StoreNotFound(f"no {path} at revision {revision} in {self.uri}") from exc
        except OSError as exc:
            raise StoreError(f"could not read {path} from {self.uri}: {exc.strerror}") from exc

    def latest(self, tenant_hash: str) -> PublishedFiles | None:
        paths = model_paths(tenant_hash)
        head = self._head(tenant_hash)
        return PublishedFiles(head, paths) if head is not None else None

    def revision_messages(self, tenant_hash: str) -> list[str]:
        _check_tenant_hash(tenant_hash)
        messages: list[str] = []
        seen: set[str] = set()
        revision = self._head(tenant_hash)
        while revision is not None and revision not in seen:
            seen.add(revision)
            meta_path = self.root / ".revisions" / tenant_hash / revision / "meta.json"
            try:
                meta = json.loads(meta_path.read_bytes())
            except (OSError, ValueError) as exc:
                raise StoreError(f"corrupt version history for {tenant_hash}") from exc
            messages.append(str(meta["message"]))
            parent = meta.get("parent")
            revision = parent if isinstance(parent, str) else None
        return messages

    def _head(self, tenant_hash: str) -> str | None:
        try:
            head = (self.root / ".revisions" / tenant_hash / "HEAD").read_text("ascii").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"could not read the head of {tenant_hash}: {exc.strerror}") from exc
        if _FILE_REVISION_RE.fullmatch(head) is None:
            raise StoreError(f"corrupt HEAD for {tenant_hash} in {self.uri}")
        return head


class HubStore:
    """Hugging Face Hub model repo through an injected ``HfApi``."""

    def __init__(
        self,
        api: HfApi,
        repo_id: str,
        *,
        private: bool = True,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        request_timeout_s: float | None = 60.0,
    ) -> None:
        _check_repo_id(repo_id)
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.uri = f"hf://{repo_id}"
        self._api = api
        self._repo_id = repo_id
        self._private = private
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._timeout_s = request_timeout_s
        self._repo_ready = False
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not security

    def publish(
        self, tenant_hash: str, files: Mapping[str, bytes], *, message: str
    ) -> PublishedFiles:
        paths = model_paths(tenant_hash)
        _check_files(files)
        _check_message(message)
        publish_id = secrets.token_hex(16)
        description = f"{_TENANT_TRAILER}: {tenant_hash}\n{_PUBLISH_TRAILER}: {publish_id}"
        maybe_landed = False  # an earlier attempt may have committed before failing

        def attempt() -> str:
            nonlocal maybe_landed
            if maybe_landed and (landed := self._find_publish(publish_id)) is not None:
                return landed
            if not self._repo_ready:
                self._api.create_repo(self._repo_id, private=self._private, exist_ok=True)
                self._repo_ready = True
            head = self._api.model_info(self._repo_id, timeout=self._timeout_s).sha
            operations = [
                CommitOperationAdd(path_in_repo=paths[kind], path_or_fileobj=bytes(files[kind]))
                for kind in KINDS
            ]
            maybe_landed = True
            info = self._api.create_commit(
                self._repo_id,
                operations=operations,
                commit_message=message,
                commit_description=description,
                parent_commit=head,
            )
            if info.oid == head:
                logger.warning("hub skipped an unchanged commit tenant_hash=%s", tenant_hash)
            return str(info.oid)

        try:
            revision = self._retry("publish", attempt)
        except StoreConflict:
            landed = self._find_publish_quietly(publish_id) if maybe_landed else None
            if landed is None:
                raise
            revision = landed
        logger.info(
            "published tenant_hash=%s revision=%s store=%s", tenant_hash, revision, self.uri
        )
        return PublishedFiles(revision, paths)

    def read(self, path: str, *, revision: str) -> bytes:
        _check_repo_path(path)
        _check_revision(revision)

        def attempt() -> bytes:
            with tempfile.TemporaryDirectory(prefix="slaops-hub-") as tmp:
                local = self._api.hf_hub_download(
                    self._repo_id,
                    path,
                    revision=revision,
                    cache_dir=Path(tmp) / "cache",
                    local_dir=Path(tmp) / "files",
                    etag_timeout=self._timeout_s or 10.0,
                )
                return Path(local).read_bytes()

        return self._retry("read", attempt)

    def latest(self, tenant_hash: str) -> PublishedFiles | None:
        paths = model_paths(tenant_hash)
        commits = self._tenant_commits(tenant_hash)
        return PublishedFiles(commits[0][0], paths) if commits else None

    def revision_messages(self, tenant_hash: str) -> list[str]:
        _check_tenant_hash(tenant_hash)
        return [title for _, title in self._tenant_commits(tenant_hash)]

    def _tenant_commits(self, tenant_hash: str) -> list[tuple[str, str]]:
        """(commit id, title) of the commits that published ``tenant_hash``, newest first."""
        trailer = re.compile(rf"^{_TENANT_TRAILER}: {tenant_hash}$", re.MULTILINE)
        try:
            commits = self._retry("list", lambda: self._api.list_repo_commits(self._repo_id))
        except StoreNotFound:
            return []  # no repo yet: nothing published
        return [(c.commit_id, c.title) for c in commits if trailer.search(c.message or "")]

    def _find_publish(self, publish_id: str) -> str | None:
        marker = f"{_PUBLISH_TRAILER}: {publish_id}"
        for commit in self._api.list_repo_commits(self._repo_id):
            if marker in (commit.message or "").splitlines():
                return str(commit.commit_id)
        return None

    def _find_publish_quietly(self, publish_id: str) -> str | None:
        try:
            return self._retry("list", lambda: self._find_publish(publish_id))
        except StoreError:
            return None

    def _retry(self, operation: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self._max_attempts + 1):
            try:
                return fn()
            except Exception as exc:
                translated = _translate(exc, self._redact)
                if translated is None:
                    raise
                error, retry_after = translated
                if not isinstance(error, StoreUnavailable):
                    raise error from exc
                if attempt == self._max_attempts:
                    raise StoreUnavailable(
                        f"hub {operation} on {self.uri} failed after {attempt} attempts: {error}"
                    ) from exc
                delay = min(self._max_backoff_s, self._backoff_s * 2 ** (attempt - 1))
                delay *= 0.5 + 0.5 * self._rng.random()
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self._max_backoff_s))
                logger.warning(
                    "hub %s failed, retrying store=%s attempt=%d/%d delay_s=%.2f error=%s",
                    operation,
                    self.uri,
                    attempt,
                    self._max_attempts,
                    delay,
                    error,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _redact(self, text: str) -> str:
        token = self._api.token
        return text.replace(token, "***") if isinstance(token, str) and token else text


def _translate(
    exc: BaseException, redact: Callable[[str], str]
) -> tuple[StoreError, float | None] | None:
    """Map a huggingface_hub / httpx failure to a store error (None: not ours)."""
    if isinstance(exc, StoreError):
        return exc, None
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        request = exc.response.request
        what = redact(f"hub answered {status} to {request.method} {request.url.path}")
        if status in (409, 412):
            return StoreConflict(f"{what}: the repo moved since its head was read"), None
        if status in _RETRY_STATUSES or status >= 500:
            return StoreUnavailable(what), _retry_after(exc.response.headers)
        if status in (401, 403):
            return StoreError(f"{what}: check the token and its write access"), None
        if status == 404 or isinstance(
            exc, RepositoryNotFoundError | RevisionNotFoundError | RemoteEntryNotFoundError
        ):
            return StoreNotFound(what), None
        return StoreError(what), None
    if isinstance(exc, LocalEntryNotFoundError):  # download: the HEAD call failed
        cause = exc.__cause__
        if cause is not None and (inner := _translate(cause, redact)) is not None:
            return inner
        return StoreError("hub download failed: the file metadata could not be fetched"), None
    if isinstance(exc, OfflineModeIsEnabled):
        return StoreError("huggingface_hub offline mode is enabled (HF_HUB_OFFLINE)"), None
    if isinstance(
        exc,
        httpx2.TimeoutException
        | httpx2.NetworkError
        | httpx2.RemoteProtocolError
        | ConnectionError
        | TimeoutError,
    ):
        return StoreUnavailable(redact(f"{type(exc).__name__}: {exc}")), None
    return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _check_tenant_hash(tenant_hash: str) -> None:
    if not isinstance(tenant_hash, str) or _TENANT_HASH_RE.fullmatch(tenant_hash) is None:
        raise ValueError("tenant_hash must be 64 lowercase hex characters")


def _check_files(files: Mapping[str, bytes]) -> None:
    if set(files) != set(KINDS):
        raise ValueError(f"publish needs exactly the kinds {sorted(KINDS)}, got {sorted(files)}")
    for kind, data in files.items():
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"files[{kind!r}] must be bytes")


def _check_message(message: str) -> None:
    if not isinstance(message, str) or not message.strip():
        raise ValueError("commit message must be a non-empty string")
    if "\n" in message or "\r" in message or len(message) > MAX_MESSAGE_LEN:
        raise ValueError(f"commit message must be one line of at most {MAX_MESSAGE_LEN} chars")


def _check_repo_path(path: str) -> None:
    if (
        not isinstance(path, str)
        or _REPO_PATH_RE.fullmatch(path) is None
        or any(part in (".", "..") for part in path.split("/"))
        or not path.startswith(f"{MODEL_DIR}/")
    ):
        raise StoreError(f"refusing store path {path!r}: must be a plain path under {MODEL_DIR}/")


def _check_revision(revision: str) -> None:
    if not isinstance(revision, str) or _REVISION_RE.fullmatch(revision) is None:
        raise StoreError(f"refusing revision {revision!r}")
    if ".." in revision:
        raise StoreError(f"refusing revision {revision!r}")


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if (
        len(parts) != 2
        or not all(_REPO_PART_RE.fullmatch(part) for part in parts)
        or any("--" in part or ".." in part for part in parts)
        or parts[1].endswith(".git")
    ):
        raise ValueError(
            "hf:// store URI needs OWNER/REPO: letters, digits, '-', '_', '.', "
            "at most 96 characters each, no '--' or '..'"
        )


def _check_endpoint(endpoint: str) -> None:
    parts = urlsplit(endpoint)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
    ):
        raise ValueError("hub endpoint must be an http(s) URL without credentials or query")


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_durable(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_durable(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
