"""The local, versioned store (``file://DIR``); the layout is in ``kernel.store``'s docstring."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from kernel.durable import atomic_write, fsync_dir, write_durable
from kernel.errors import StoreConflict, StoreError, StoreNotFound
from kernel.limits import MAX_ARTIFACT_BYTES
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
    _FILE_REVISION_RE,
    _MODEL_PATH_RE,
    MODEL_DIR,
    _check_repo_path,
    _check_revision,
    _check_tenant_hash,
    check_publish,
    model_paths,
    report_paths,
)
from kernel.store.protocol import (
    ANY_PARENT,
    MAX_ROOT_README_BYTES,
    ROOT_README,
    AnyParent,
    PublishedFiles,
    TenantHead,
    root_readme_bytes,
)

logger = logging.getLogger(__name__)

#: HEAD holds one revision id; meta.json a revision, its parent, a message <= 1000 chars.
_MAX_HEAD_BYTES = 4096
_MAX_META_BYTES = 64 * 1024
_INDEX = "index.json"


def open_file_store(directory: str, options: StoreOptions) -> FileStore:
    """``file://DIR``: the store in ``DIR`` (made on the first publish); needs no options."""
    if not directory or ".." in directory.split("/"):
        raise ValueError(
            "file:// store URI needs a directory without '..' segments, "
            "e.g. file:///var/lib/slaops/models"
        )
    return FileStore(Path(directory))


class FileStore:
    """Versioned local store; see the module docstring for the layout.

    A tenant's history is its chain of version directories, each ``meta.json`` naming
    its parent (written under the tenant's lock); the index beside each version is a
    cache of it, checked by ``kernel.store.index.verified_head``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.uri = f"file://{self.root}"
        self._verified = VerifiedHeads()

    def publish(
        self,
        tenant_hash: str,
        files: Mapping[str, bytes],
        *,
        message: str,
        parent: str | None | AnyParent = ANY_PARENT,
    ) -> PublishedFiles:
        """One version, committed by moving the tenant's ``HEAD`` under its lock.

        The compare-and-swap is the tenant's own (``HEAD`` under ``.lock``): other
        tenants' publishes never conflict with this one.
        """
        paths = check_publish(tenant_hash, files, message=message, parent=parent)
        tenant_dir = self.root / ".revisions" / tenant_hash
        try:
            tenant_dir.mkdir(parents=True, exist_ok=True)
            with _flock(tenant_dir / ".lock"):
                head = self.head(tenant_hash)
                current = head.revision if head is not None else None
                if parent is not ANY_PARENT and parent != current:
                    raise StoreConflict(
                        f"tenant_hash={tenant_hash} is at {current}, not {parent}: "
                        "another writer published it"
                    )
                revision = secrets.token_hex(20)
                staging = tenant_dir / f".tmp-{revision}"
                staging.mkdir()
                try:
                    for kind, path in paths.items():
                        write_durable(staging / Path(path).name, bytes(files[kind]))
                    index = next_index(head, tenant_hash, message, secrets.token_hex(16))
                    write_durable(staging / _INDEX, index)
                    meta = {
                        "revision": revision,
                        "parent": current,
                        "message": message,
                        "paths": paths,
                        "created_at": datetime.now(UTC).isoformat(),
                    }
                    write_durable(staging / "meta.json", json.dumps(meta).encode())
                    fsync_dir(staging)
                    os.rename(staging, tenant_dir / revision)
                    fsync_dir(tenant_dir)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                atomic_write(tenant_dir / "HEAD", f"{revision}\n".encode())  # commit point
                self._verified.put(
                    tenant_hash,
                    published_head(
                        PublishedFiles(revision, model_paths(tenant_hash)), message, head
                    ),
                )
                (self.root / MODEL_DIR).mkdir(exist_ok=True)
                for kind, path in paths.items():  # convenience mirror, after the commit
                    atomic_write(self.root / path, bytes(files[kind]))
                for kind, path in report_paths(tenant_hash).items():  # no stale report
                    if kind not in files:
                        (self.root / path).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(
                f"could not publish to {self.uri}: {exc.strerror or exc} "
                "(the store directory must be writable by this user, on a disk with room)"
            ) from exc
        logger.info(
            "published tenant_hash=%s revision=%s store=%s", tenant_hash, revision, self.uri
        )
        return PublishedFiles(revision, model_paths(tenant_hash))

    def write_root_readme(self, text: str) -> None:
        """``DIR/README.md``, replaced atomically (nothing written when unchanged)."""
        data = root_readme_bytes(text)
        path = self.root / ROOT_README
        try:
            try:
                if _read_regular(path, MAX_ROOT_README_BYTES, what=ROOT_README) == data:
                    return
            except (FileNotFoundError, StoreError):
                pass  # none yet, or not a file we wrote: replace it
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            raise StoreError(
                f"could not write {ROOT_README} to {self.uri}: {exc.strerror or exc} "
                "(the store directory must be writable by this user, on a disk with room)"
            ) from exc
        logger.info("wrote the root README store=%s bytes=%d", self.uri, len(data))

    def read(self, path: str, *, revision: str, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        _check_repo_path(path)
        _check_revision(revision)
        match = _MODEL_PATH_RE.fullmatch(path)
        if match is None or _FILE_REVISION_RE.fullmatch(revision) is None:
            raise StoreNotFound(f"no {path} at revision {revision} in {self.uri}")
        version_dir = self.root / ".revisions" / match.group(1) / revision
        try:
            if version_dir.is_symlink():
                raise StoreError(f"refusing revision {revision}: it is a symbolic link")
            if not (version_dir / "meta.json").is_file():
                raise FileNotFoundError(revision)
            return _read_regular(version_dir / Path(path).name, max_bytes, what=path)
        except FileNotFoundError as exc:
            raise StoreNotFound(f"no {path} at revision {revision} in {self.uri}") from exc
        except OSError as exc:
            raise StoreError(f"could not read {path} from {self.uri}: {exc.strerror}") from exc

    def head(self, tenant_hash: str) -> TenantHead | None:
        """``HEAD``, checked against the tenant's history (``verified_head``).

        One read when the newest version is the one this store verified last; after a
        new version, a walk back to that one; without one, ``HEAD``, ``meta.json`` and
        the index, then ``VERIFY_DEPTH`` more versions' ``meta.json`` and one more index,
        whatever the store holds, unless the index disagrees with the history, which is
        then walked whole.
        """
        paths = model_paths(tenant_hash)
        revision = self._head(tenant_hash)
        if revision is None:
            return None
        known = self._verified.get(tenant_hash)
        if known is not None and known.revision == revision:
            return known
        meta = self._meta(tenant_hash, revision)
        head = verified_head(
            tenant_hash,
            PublishedFiles(revision, paths),
            str(meta["message"]),
            self._index(tenant_hash, revision),
            previous=lambda rev: self._previous(tenant_hash, rev),
            index_at=lambda rev: self._index(tenant_hash, rev),
            known=known,
        )
        self._verified.put(tenant_hash, head)
        return head

    def _previous(self, tenant_hash: str, revision: str) -> Version | None:
        """The version before ``revision`` in the tenant's history (None: the first)."""
        parent = self._meta(tenant_hash, revision).get("parent")
        if not isinstance(parent, str) or _FILE_REVISION_RE.fullmatch(parent) is None:
            return None
        return Version(parent, str(self._meta(tenant_hash, parent)["message"]))

    def _index(self, tenant_hash: str, revision: str) -> TenantIndex | None:
        """The index kept with version ``revision``, or None (logged) if it is unusable."""
        path = self.root / ".revisions" / tenant_hash / revision / _INDEX
        try:
            data = _read_regular(path, MAX_INDEX_BYTES, what=_INDEX)
        except FileNotFoundError:
            return None
        except (OSError, StoreError) as exc:
            logger.warning("ignoring the index of tenant_hash=%s: %s", tenant_hash, exc)
            return None
        return parse_index(data, tenant_hash)

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
            meta = self._meta(tenant_hash, revision)
            messages.append(str(meta["message"]))
            parent = meta.get("parent")
            revision = parent if isinstance(parent, str) else None
        return messages

    def _meta(self, tenant_hash: str, revision: str) -> dict[str, object]:
        meta_path = self.root / ".revisions" / tenant_hash / revision / "meta.json"
        try:
            meta = json.loads(_read_regular(meta_path, _MAX_META_BYTES, what="meta.json"))
            if not isinstance(meta, dict) or not isinstance(meta["message"], str):
                raise TypeError("meta.json is not an object with a message")
        except (OSError, ValueError, TypeError, KeyError, StoreError) as exc:
            raise StoreError(
                f"corrupt version history for {tenant_hash}: {exc}; restore "
                f".revisions/{tenant_hash} in {self.uri} from a backup"
            ) from exc
        return meta

    def _head(self, tenant_hash: str) -> str | None:
        path = self.root / ".revisions" / tenant_hash / "HEAD"
        try:
            head = _read_regular(path, _MAX_HEAD_BYTES, what="HEAD").decode("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"could not read the head of {tenant_hash}: {exc}") from exc
        if _FILE_REVISION_RE.fullmatch(head) is None:
            raise StoreError(
                f"corrupt HEAD for {tenant_hash} in {self.uri}: restore "
                f".revisions/{tenant_hash}/HEAD from a backup (it names one revision directory)"
            )
        return head


def _read_regular(path: Path, max_bytes: int, *, what: str) -> bytes:
    """The bytes of the regular file at ``path``, refusing anything else or anything big.

    A store writer could leave a symlink (to ``/dev/zero``, to a secret), a FIFO (an
    open that blocks for ever) or a device where a file belongs, or a file too large to
    hold: the open neither follows a final symlink nor waits on a FIFO, ``fstat`` on
    the opened descriptor must say regular file, and at most ``max_bytes + 1`` bytes are
    read, whatever the size says. Raises ``FileNotFoundError`` for a missing file and
    :class:`StoreError` for a refused one.
    """
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if os.path.islink(path):
            raise StoreError(f"refusing {what}: it is a symbolic link, not a file") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"refusing {what}: not a regular file (mode {info.st_mode:o})")
        if info.st_size > max_bytes:
            raise StoreError(f"refusing {what}: {info.st_size} bytes, over {max_bytes}")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise StoreError(f"refusing {what}: over {max_bytes} bytes (it grew while read)")
        return data
    finally:
        os.close(fd)


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
