"""The Hugging Face Hub backend (``hf://OWNER/REPO``) and its error translation."""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import secrets
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, paginate

from kernel.backoff import Backoff
from kernel.errors import StoreConflict, StoreError, StoreNotFound, StoreUnavailable
from kernel.limits import MAX_ARTIFACT_BYTES
from kernel.store.hub_http import configure_hub_http
from kernel.store.index import (
    MAX_INDEX_BYTES,
    TenantIndex,
    VerifiedHeads,
    Version,
    next_index,
    parse_index,
    published_head,
    verified_head,
)
from kernel.store.options import StoreOptions
from kernel.store.paths import (
    _PUBLISH_TRAILER,
    _RETRY_STATUSES,
    _TENANT_TRAILER,
    _check_endpoint,
    _check_repo_id,
    _check_repo_path,
    _check_revision,
    _check_tenant_hash,
    check_publish,
    index_path,
    model_paths,
)
from kernel.store.protocol import (
    ANY_PARENT,
    ROOT_README,
    AnyParent,
    PublishedFiles,
    TenantHead,
    root_readme_bytes,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")


def open_hub_store(repo_id: str, options: StoreOptions) -> HubStore:
    """``hf://OWNER/REPO``: the Hub repo ``repo_id``, through ``options.hf_api`` or a new client.

    The token and endpoint go to ``HfApi`` only, never into a message; with
    ``http_timeout_s`` every huggingface_hub request is bounded process-wide (see
    :func:`configure_hub_http`). Raises ``ValueError`` for a malformed repo id or
    endpoint, or for a client given together with a token or endpoint.
    """
    _check_repo_id(repo_id)
    api = options.hf_api
    if api is None:
        if options.endpoint is not None:
            _check_endpoint(options.endpoint)
        token = options.token
        secret = token.get_secret_value() if token is not None else None
        api = HfApi(endpoint=options.endpoint, token=secret, library_name="slaops")
    elif options.token is not None or options.endpoint is not None:
        raise ValueError(
            "pass either hf_api or token/endpoint, not both: a given client keeps its own"
        )
    if options.http_timeout_s is not None:
        configure_hub_http(options.http_timeout_s)
    return HubStore(api, repo_id, options)


class _TenantMoved(StoreConflict):
    """The tenant's own newest version moved: the caller must look again."""


@dataclass(frozen=True)
class _TenantState:
    """A tenant at one repo revision: its head, and the index beside it if current."""

    head: TenantHead | None
    index: TenantIndex | None = None


@dataclass(frozen=True)
class _Located:
    """A tenant's newest version at one repo revision, and its index file there (if any)."""

    version: Version
    index_file: RepoFile | None


class HubStore:
    """Hugging Face Hub model repo through an injected ``HfApi``.

    A publish is one ``create_commit`` of the three model files and the tenant's index
    with ``parent_commit`` = the repo head it read the tenant's state at. When another
    writer's commit lands first (412) the tenant's own newest version is checked again:
    unchanged (another tenant moved the repo) it commits again on the new head, at
    most ``max_conflicts`` times; moved, it raises ``StoreConflict`` for the caller.
    ``head`` costs one request (``paths-info`` with each path's last commit) when the
    tenant's newest version is the one this store verified last; otherwise its index
    is downloaded (metadata and body) and checked against the repo's history
    (``kernel.store.index.verified_head``): each version walked back costs two
    requests (the first page of the commit list from that commit, for its parent, then
    ``paths-info`` there), at most ``VERIFY_DEPTH`` of them and one more index,
    whatever the repo holds, unless the index disagrees with the history, which is then
    walked whole (once: the head is remembered).
    """

    def __init__(self, api: HfApi, repo_id: str, options: StoreOptions | None = None) -> None:
        options = options if options is not None else StoreOptions()
        _check_repo_id(repo_id)
        if options.max_attempts < 1 or options.max_conflicts < 1:
            raise ValueError("max_attempts and max_conflicts must be >= 1")
        self.uri = f"hf://{repo_id}"
        self._api = api
        self._repo_id = repo_id
        self._private = options.private
        self._max_attempts = options.max_attempts
        self._max_conflicts = options.max_conflicts
        self._backoff_s = options.backoff_s
        self._max_backoff_s = options.max_backoff_s
        self._sleep = options.sleep
        self._timeout_s = options.http_timeout_s
        self._repo_ready = False
        self._rng = random.Random()  # noqa: S311 - backoff jitter, not security
        self._verified = VerifiedHeads()

    def publish(
        self,
        tenant_hash: str,
        files: Mapping[str, bytes],
        *,
        message: str,
        parent: str | None | AnyParent = ANY_PARENT,
    ) -> PublishedFiles:
        paths = check_publish(tenant_hash, files, message=message, parent=parent)
        publish_id = secrets.token_hex(16)
        description = f"{_TENANT_TRAILER}: {tenant_hash}\n{_PUBLISH_TRAILER}: {publish_id}"

        def attempt() -> str:
            if not self._repo_ready:
                self._api.create_repo(self._repo_id, private=self._private, exist_ok=True)
                self._repo_ready = True
            # Only the head sha: the default answer lists every file of the repo.
            head = self._api.model_info(self._repo_id, timeout=self._timeout_s, expand=["sha"]).sha
            if head is None:
                raise StoreError(f"{self.uri}: the hub named no head revision")
            state = self._state(tenant_hash, revision=head, want_index=True)
            if state.index is not None and state.index.publish_id == publish_id:
                assert state.head is not None  # noqa: S101 - an index is only read beside one
                return state.head.revision  # an earlier attempt landed; its answer was lost
            current = state.head.revision if state.head is not None else None
            if parent is not ANY_PARENT and parent != current:
                raise _TenantMoved(
                    f"tenant_hash={tenant_hash} is at {current}, not {parent}: "
                    "another writer published it"
                )
            index = next_index(state.head, tenant_hash, message, publish_id)
            operations = [
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=bytes(files[kind]))
                for kind, path in paths.items()
            ]
            operations.append(
                CommitOperationAdd(path_in_repo=index_path(tenant_hash), path_or_fileobj=index)
            )
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
            made = PublishedFiles(str(info.oid), model_paths(tenant_hash))
            self._verified.put(tenant_hash, published_head(made, message, state.head))
            return str(info.oid)

        for race in range(1, self._max_conflicts + 1):
            try:
                revision = self._retry("publish", attempt)
                break
            except _TenantMoved:
                raise
            except StoreConflict:
                # Another writer moved the repo head (most often: another tenant's
                # version). The next attempt re-reads this tenant at the new head.
                if race == self._max_conflicts:
                    raise StoreConflict(
                        f"hub publish on {self.uri} lost {race} races for the repo head: "
                        "too many writers at once; publish again"
                    ) from None
                delay = self._rng.random() * min(self._max_backoff_s, self._backoff_s * race)
                logger.info(
                    "hub head moved under tenant_hash=%s; committing again race=%d delay_s=%.2f",
                    tenant_hash,
                    race,
                    delay,
                )
                self._sleep(delay)
        logger.info(
            "published tenant_hash=%s revision=%s store=%s", tenant_hash, revision, self.uri
        )
        return PublishedFiles(revision, model_paths(tenant_hash))

    def write_root_readme(self, text: str) -> None:
        """One commit of ``README.md`` alone, on whatever the head is (no tenant's file:
        it cannot move a tenant's version, so it needs no compare-and-swap).

        First one ``paths-info`` request: when the README there has this text's git
        blob id, nothing is committed.
        """
        data = root_readme_bytes(text)
        blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False)

        def attempt() -> None:
            if not self._repo_ready:
                self._api.create_repo(self._repo_id, private=self._private, exist_ok=True)
                self._repo_ready = True
            found = self._api.get_paths_info(self._repo_id, [ROOT_README], revision="main")
            if any(isinstance(f, RepoFile) and f.blob_id == blob_id.hexdigest() for f in found):
                logger.info("the root README is unchanged store=%s", self.uri)
                return
            self._api.create_commit(
                self._repo_id,
                operations=[CommitOperationAdd(path_in_repo=ROOT_README, path_or_fileobj=data)],
                commit_message="slaops: refresh the index of tenants' cards (README.md)",
            )
            logger.info("wrote the root README store=%s bytes=%d", self.uri, len(data))

        self._retry("index", attempt)

    def read(self, path: str, *, revision: str, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        _check_repo_path(path)
        _check_revision(revision)
        return self._retry("read", lambda: self._download(path, revision, max_bytes))

    def _download(
        self, path: str, revision: str, max_bytes: int, *, known_size: int | None = None
    ) -> bytes:
        """One file at one revision, refused by its size before a byte is downloaded.

        ``known_size`` (from ``paths-info``) saves the metadata request.
        """
        _check_repo_path(path)
        _check_revision(revision)
        with tempfile.TemporaryDirectory(prefix="slaops-hub-") as tmp:
            cache_dir, local_dir = Path(tmp) / "cache", Path(tmp) / "files"
            etag_timeout = self._timeout_s or 10.0
            size = known_size
            if size is None:
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
            # huggingface_hub checks the body against the size it is told; we check the
            # file on disk again before reading it into memory.
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

    def head(self, tenant_hash: str) -> TenantHead | None:
        _check_tenant_hash(tenant_hash)
        try:
            state = self._retry("lookup", lambda: self._state(tenant_hash, revision="main"))
        except StoreNotFound:
            return None  # no repo yet: nothing published
        return state.head

    def latest(self, tenant_hash: str) -> PublishedFiles | None:
        head = self.head(tenant_hash)
        return head.files if head is not None else None

    def revision_messages(self, tenant_hash: str) -> list[str]:
        """The tenant's messages, newest first, from the repo's history (two requests a
        version of this tenant, and one)."""
        _check_tenant_hash(tenant_hash)
        try:
            located = self._retry("lookup", lambda: self._locate(tenant_hash, "main"))
        except StoreNotFound:
            return []
        messages: list[str] = []
        seen: set[str] = set()
        version = located.version if located is not None else None
        while version is not None and version.revision not in seen:
            seen.add(version.revision)
            messages.append(version.message)
            at = functools.partial(self._previous, tenant_hash, version.revision)
            version = self._retry("lookup", at)
        return messages

    def _state(self, tenant_hash: str, *, revision: str, want_index: bool = False) -> _TenantState:
        """The tenant at ``revision``: its card's last commit is its newest version.

        One ``paths-info`` request names the last commit of the card and of the index;
        a version this store verified last needs nothing more (unless ``want_index``).
        Otherwise the index is read and the head checked against the history
        (``verified_head``: a bounded walk unless the index disagrees with it).
        """
        located = self._locate(tenant_hash, revision)
        if located is None:
            return _TenantState(None)
        newest = located.version
        known = self._verified.get(tenant_hash)
        if known is not None and known.revision == newest.revision and not want_index:
            return _TenantState(known)
        index = self._read_index(tenant_hash, located)
        seen: dict[str, _Located | None] = {}

        def previous(at: str) -> Version | None:
            before = self._located_before(tenant_hash, at)
            if before is not None:
                seen[before.version.revision] = before
            return before.version if before is not None else None

        def index_at(at: str) -> TenantIndex | None:
            before = seen.get(at)
            return self._read_index(tenant_hash, before) if before is not None else None

        head = verified_head(
            tenant_hash,
            PublishedFiles(newest.revision, model_paths(tenant_hash)),
            newest.message,
            index,
            previous=previous,
            index_at=index_at,
            known=known,
        )
        self._verified.put(tenant_hash, head)
        current = index is not None and index.served[0] == newest.message
        return _TenantState(head, index if current else None)

    def _previous(self, tenant_hash: str, revision: str) -> Version | None:
        """The tenant's version before ``revision`` in the repo's history (None: none)."""
        before = self._located_before(tenant_hash, revision)
        return before.version if before is not None else None

    def _located_before(self, tenant_hash: str, revision: str) -> _Located | None:
        """Two requests: the commit before ``revision``, then the tenant's newest there."""
        parent = self._parent_commit(revision)
        return self._locate(tenant_hash, parent) if parent is not None else None

    def _locate(self, tenant_hash: str, revision: str) -> _Located | None:
        """The tenant's newest version at ``revision`` (its card's last commit), one request."""
        paths = model_paths(tenant_hash)
        where = index_path(tenant_hash)
        found = self._api.get_paths_info(
            self._repo_id, [paths["card"], where], expand=True, revision=revision
        )
        infos = {f.path: f for f in found if isinstance(f, RepoFile)}
        card = infos.get(paths["card"])
        if card is None:
            return None
        if card.last_commit is None:
            raise StoreError(f"{self.uri}: the hub did not name the last commit of {card.path}")
        newest = str(card.last_commit.oid)
        _check_revision(newest)
        title = str(card.last_commit.title or "")
        return _Located(Version(newest, title), infos.get(where))

    def _read_index(self, tenant_hash: str, located: _Located) -> TenantIndex | None:
        """The index as of ``located``'s version, or None (logged) if there is no usable one.

        When its last commit is the card's (always, unless another writer skipped or
        rewrote it) paths-info gave its size; otherwise it is read at the card's
        revision, size checked first.
        """
        stored, newest = located.index_file, located.version.revision
        if stored is None:
            return None
        where = index_path(tenant_hash)
        beside = stored.last_commit is not None and stored.last_commit.oid == newest
        try:
            data = self._download(
                where, newest, MAX_INDEX_BYTES, known_size=stored.size if beside else None
            )
        except StoreError as exc:  # refused: over the size cap
            logger.warning("ignoring the index of tenant_hash=%s: %s", tenant_hash, exc)
            return None
        except Exception as exc:
            translated = _translate(exc, self._redact)
            if translated is None or not isinstance(translated[0], StoreNotFound):
                raise  # the retry loop translates and retries it
            return None  # no index as of that version
        return parse_index(data, tenant_hash)

    def _parent_commit(self, revision: str) -> str | None:
        """The commit before ``revision`` in the repo's history (None: the first).

        One request: the first page of the commit list from ``revision``
        (``huggingface_hub``'s own paginator, which requests no further page).
        """
        _check_revision(revision)
        api = self._api
        headers = build_hf_headers(
            token=api.token,
            library_name=api.library_name,
            library_version=api.library_version,
            user_agent=api.user_agent,
            headers=api.headers,
        )
        url = f"{api.endpoint}/api/models/{self._repo_id}/commits/{revision}"
        commits = iter(paginate(url, params={}, headers=headers, timeout=self._timeout_s))
        first, second = next(commits, None), next(commits, None)
        if not isinstance(first, dict) or first.get("id") != revision:
            raise StoreError(f"{self.uri}: the commit list from {revision} does not start there")
        if second is None:
            return None
        parent = second.get("id") if isinstance(second, dict) else None
        if not isinstance(parent, str):
            raise StoreError(f"{self.uri}: the commit list from {revision} names no parent")
        _check_revision(parent)
        return parent

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
                        f"hub {operation} on {self.uri} failed after {attempt} attempts: {error}; "
                        "the Hub is unreachable or overloaded, try again later"
                    ) from exc
                delay = Backoff(self._backoff_s, self._max_backoff_s).jittered_s(
                    attempt - 1, self._rng
                )
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
        return StoreError(
            "hub download failed: the file metadata could not be fetched; "
            "check HF_ENDPOINT and that the Hub is reachable"
        ), None
    if isinstance(exc, httpx2.TooManyRedirects):
        return StoreError(redact(f"hub redirected too many times: {exc}; check HF_ENDPOINT")), None
    if isinstance(exc, OfflineModeIsEnabled):
        return StoreError(
            "huggingface_hub offline mode is enabled (HF_HUB_OFFLINE): unset it to use hf://"
        ), None
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
