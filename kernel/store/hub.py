"""The Hugging Face Hub backend (``hf://OWNER/REPO``) and its error translation."""

from __future__ import annotations

import logging
import random
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from kernel.errors import StoreConflict, StoreError, StoreNotFound, StoreUnavailable
from kernel.limits import MAX_ARTIFACT_BYTES
from kernel.store.paths import (
    _PUBLISH_TRAILER,
    _RETRY_STATUSES,
    _TENANT_TRAILER,
    _check_files,
    _check_message,
    _check_repo_id,
    _check_repo_path,
    _check_revision,
    _check_tenant_hash,
    model_paths,
    publish_paths,
)
from kernel.store.protocol import PublishedFiles

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
        _check_files(files)
        _check_message(message)
        paths = publish_paths(tenant_hash, files)
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
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=bytes(files[kind]))
                for kind, path in paths.items()
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
        return PublishedFiles(revision, model_paths(tenant_hash))

    def read(self, path: str, *, revision: str, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        _check_repo_path(path)
        _check_revision(revision)

        def attempt() -> bytes:
            with tempfile.TemporaryDirectory(prefix="slaops-hub-") as tmp:
                cache_dir, local_dir = Path(tmp) / "cache", Path(tmp) / "files"
                etag_timeout = self._timeout_s or 10.0
                # The size from the file's metadata first: an oversized file is refused
                # before a byte of it is downloaded.
                info = self._api.hf_hub_download(
                    self._repo_id,
                    path,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_dir=local_dir,
                    etag_timeout=etag_timeout,
                    dry_run=True,
                )
                size = info.file_size
                if not isinstance(size, int) or isinstance(size, bool):
                    raise StoreError(f"refusing {path}: the hub did not say how large it is")
                if size > max_bytes:
                    raise StoreError(f"refusing {path}: {size} bytes, over {max_bytes}")
                # huggingface_hub checks the body against that size; we check the file
                # on disk again before reading it into memory.
                local = Path(
                    self._api.hf_hub_download(
                        self._repo_id,
                        path,
                        revision=revision,
                        cache_dir=cache_dir,
                        local_dir=local_dir,
                        etag_timeout=etag_timeout,
                    )
                )
                on_disk = local.stat().st_size
                if on_disk > max_bytes:
                    raise StoreError(f"refusing {path}: {on_disk} bytes, over {max_bytes}")
                return local.read_bytes()

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
    if isinstance(exc, httpx2.TooManyRedirects):
        return StoreError(redact(f"hub redirected too many times: {exc}")), None
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
