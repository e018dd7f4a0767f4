"""The store layout and the checks every backend applies to names, paths and messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from kernel.errors import StoreError
from kernel.store.protocol import AnyParent

MODEL_DIR = "sla_models"
KINDS: dict[str, str] = {"safetensors": "safetensors", "pt": "pt", "card": "json"}  # kind -> ext
#: The version's report, published in the same commit when it could be rendered (each
#: optional): kind -> suffix of ``sla_models/{tenant_hash}_sla_model.{suffix}``.
REPORT_KINDS: dict[str, str] = {
    "report": "md",
    "plot_search": "search.png",
    "plot_learning": "learning.png",
    "plot_pr": "pr.png",
    "plot_reliability": "reliability.png",
    "plot_confusion": "confusion.png",
    "plot_baselines": "baselines.png",
}
MAX_MESSAGE_LEN = 1000
_TENANT_HASH_RE = re.compile(r"[0-9a-f]{64}")
_REPO_PATH_RE = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_SUFFIXES = "|".join(re.escape(x) for x in [*KINDS.values(), *REPORT_KINDS.values()])
_MODEL_PATH_RE = re.compile(rf"{MODEL_DIR}/([0-9a-f]{{64}})_sla_model\.({_SUFFIXES})")
_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILE_REVISION_RE = re.compile(r"[0-9a-f]{40}")
_REPO_PART_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_URI_SCHEME_RE = re.compile(r"[a-z][a-z0-9]{0,15}")
_URI_FORBIDDEN = set(";|&$`<>\"'\\*?#%{}[]!^~()@:")
_TENANT_TRAILER = "slaops-tenant"
_PUBLISH_TRAILER = "slaops-publish"
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def model_paths(tenant_hash: str) -> dict[str, str]:
    """kind -> ``sla_models/{tenant_hash}_sla_model.{ext}``."""
    _check_tenant_hash(tenant_hash)
    return {kind: f"{MODEL_DIR}/{tenant_hash}_sla_model.{ext}" for kind, ext in KINDS.items()}


def report_paths(tenant_hash: str) -> dict[str, str]:
    """report kind -> ``sla_models/{tenant_hash}_sla_model.{suffix}`` (beside the model)."""
    _check_tenant_hash(tenant_hash)
    return {kind: f"{MODEL_DIR}/{tenant_hash}_sla_model.{s}" for kind, s in REPORT_KINDS.items()}


def publish_paths(tenant_hash: str, files: Mapping[str, bytes]) -> dict[str, str]:
    """kind -> path of every file of one publish: the model kinds and the report kinds given."""
    reports = report_paths(tenant_hash)
    return {**model_paths(tenant_hash), **{k: reports[k] for k in files if k in reports}}


def check_publish(
    tenant_hash: str, files: Mapping[str, bytes], *, message: str, parent: object
) -> dict[str, str]:
    """Every backend's checks before a publish; kind -> path of each file it writes.

    Raises ``ValueError``/``TypeError`` (see ``ModelStore``) before anything is written.
    """
    _check_files(files)
    _check_message(message)
    _check_parent(parent)
    return publish_paths(tenant_hash, files)


def index_path(tenant_hash: str) -> str:
    """``sla_models/{tenant_hash}_sla_index.json``: see ``kernel.store.index``."""
    _check_tenant_hash(tenant_hash)
    return f"{MODEL_DIR}/{tenant_hash}_sla_index.json"


def _check_parent(parent: object) -> None:
    if parent is None or isinstance(parent, AnyParent):
        return
    if not isinstance(parent, str) or _REVISION_RE.fullmatch(parent) is None:
        raise ValueError("parent must be a revision, None or ANY_PARENT")


def _check_tenant_hash(tenant_hash: str) -> None:
    if not isinstance(tenant_hash, str) or _TENANT_HASH_RE.fullmatch(tenant_hash) is None:
        raise ValueError("tenant_hash must be 64 lowercase hex characters")


def _check_files(files: Mapping[str, bytes]) -> None:
    kinds = set(files)
    if not set(KINDS) <= kinds or not kinds <= set(KINDS) | set(REPORT_KINDS):
        raise ValueError(
            f"publish needs the kinds {sorted(KINDS)} and optionally report kinds "
            f"{sorted(REPORT_KINDS)}, got {sorted(files)}"
        )
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
        raise ValueError(
            "hub endpoint must be an http(s) URL without credentials or query (HF_ENDPOINT), "
            "e.g. https://huggingface.co; pass the token as HF_TOKEN"
        )
