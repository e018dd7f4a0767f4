"""Serves one retrain request: dedupe, replay, train, decide, publish, and say so.

Runs in the retrainer's worker thread. Returns the events to announce; the service
produces them and only then commits the request, so a crash anywhere in here leaves
the request to be served again. Serving it again is safe: the store remembers which
requests were published (in each version's commit message), so a request whose
model landed but whose announcement did not is re-announced, never retrained.

The store never sees a request's `event_id`: that is an unkeyed hash of the slug and
the offsets it names, so anyone reading the store could confirm a guessed slug with
it. Commit messages and card lineage carry `request_ref` (an HMAC of the `event_id`
under the tenant key) instead, and the dedupe looks for that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, SecretStr

from kernel.artifacts import ArtifactError, ModelCard, load_model, sha256_hex
from kernel.errors import StoreError, StoreNotFound
from kernel.store import ModelStore, PublishedFiles
from kernel.tenant_hash import request_ref, tenant_hash
from retrainer.dataset import DatasetError
from retrainer.pipeline import (
    Champion,
    TrainingConfig,
    TrainingOutcome,
    finite,
    train_and_decide,
)
from retrainer.replay import ReplayError, RequestRefused, TenantRows
from retrainer.report import report_files
from schemas import ChampionKept, ModelPublished, RetrainFailed, RetrainRequested

log = logging.getLogger(__name__)

OutcomeKind = Literal["published", "kept", "failed", "duplicates"]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    events: list[tuple[str, bytes, BaseModel]]
    #: The search and decision, when a model was trained (for metrics: time, fits).
    training: TrainingOutcome | None = None


class Cancelled(Exception):
    """The request's partition moved to another member while it was being served."""


def commit_message(request: RetrainRequested, tenant_key: SecretStr | bytes) -> str:
    """The store's record that `request` was served: its keyed `request_ref`.

    Neither the slug nor the `event_id` (recomputable from a guessed slug) appear.
    """
    ref = request_ref(request.event_id, tenant_key)
    return f"slaops model for request {ref} ({request.reason})"


class RequestHandler:
    """Serves one `RetrainRequested`: dedupe, replay, train, decide, publish.

    `handle` returns an `Outcome` whose events the caller produces (`ModelPublished`,
    `ChampionKept` or `RetrainFailed`); unusable data or a replay range that is gone
    becomes a `RetrainFailed`, not an exception. A request whose model the store
    already holds is re-announced, never retrained. Raises `Cancelled` when `cancel`
    was called for the request (its partition moved); store errors propagate. Never
    produces to Kafka or commits offsets.
    """

    def __init__(
        self,
        *,
        store: ModelStore,
        store_uri: str,
        tenant_key: SecretStr,
        training: TrainingConfig,
        replay: Callable[[RetrainRequested], TenantRows],
        models_topic: str,
        failures_topic: str,
        decisions_topic: str,
    ) -> None:
        self.store = store
        self._store_uri = store_uri
        self._tenant_key = tenant_key
        self._training = training
        self._replay = replay
        self._models_topic = models_topic
        self._failures_topic = failures_topic
        self._decisions_topic = decisions_topic
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def cancel(self, event_id: str) -> None:
        with self._lock:
            self._cancelled.add(event_id)

    def _check_cancelled(self, request: RetrainRequested) -> None:
        with self._lock:
            if request.event_id in self._cancelled:
                self._cancelled.discard(request.event_id)
                raise Cancelled(request.event_id)

    def handle(self, request: RetrainRequested) -> Outcome:
        key = request.tenant.encode()
        hashed = tenant_hash(request.tenant, self._tenant_key)
        messages = self.store.revision_messages(hashed)
        served = self._served_revision(request, hashed, messages)
        if served is not None:
            return served
        try:
            rows = self._replay(request)
        except RequestRefused as exc:
            return self._failed(request, "invalid_request", str(exc))
        except ReplayError as exc:
            return self._failed(request, "range_unavailable", str(exc))
        log.info(
            "tenant=%s event_id=%s replayed rows=%d (skipped other tenants=%d, invalid=%d)",
            request.tenant,
            request.event_id,
            len(rows),
            rows.other_tenants,
            rows.invalid,
        )
        champion = self._load_champion(request, hashed)
        try:
            outcome = train_and_decide(
                rows,
                request,
                self._training,
                champion,
                request_ref=request_ref(request.event_id, self._tenant_key),
            )
        except DatasetError as exc:
            return self._failed(request, exc.reason.value, exc.detail)
        self._check_cancelled(request)
        if outcome.artifacts is None:  # the champion, or a baseline, was better
            log.info(
                "tenant=%s event_id=%s not published (%s): challenger %.4f vs champion %s; %s",
                request.tenant,
                request.event_id,
                outcome.decision.verdict,
                outcome.decision.challenger_score,
                "none"
                if outcome.decision.champion_score is None
                else f"{outcome.decision.champion_score:.4f}",
                outcome.decision.detail,
            )
            kept = ChampionKept(
                request_event_id=request.event_id,
                tenant=request.tenant,
                reason=request.reason,
                decision=outcome.decision,
                challenger_metrics=outcome.metrics,
                champion_revision=champion.revision if champion is not None else None,
                decided_at=datetime.now(UTC),
            )
            return Outcome("kept", [(self._decisions_topic, key, kept)], outcome)
        # Another member may have served it meanwhile (a rebalance): look once more.
        messages = self.store.revision_messages(hashed)
        served = self._served_revision(request, hashed, messages)
        if served is not None:
            return served
        artifacts = outcome.artifacts
        files = {"safetensors": artifacts.safetensors, "pt": artifacts.pt, "card": artifacts.card}
        report = report_files(artifacts.card, hashed)  # {} if it failed: publish anyway
        published = self.store.publish(
            hashed, {**files, **report}, message=commit_message(request, self._tenant_key)
        )
        sha256 = {kind: sha256_hex(data) for kind, data in files.items()}
        event = self._announcement(
            request, hashed, published, artifacts.card_model, sha256, version=len(messages) + 1
        )
        log.info(
            "tenant=%s event_id=%s published version=%d revision=%s holdout f1=%.3f log_loss=%.4f",
            request.tenant,
            request.event_id,
            event.model_version,
            published.revision,
            event.metrics.get("f1", float("nan")),
            event.metrics.get("log_loss", float("nan")),
        )
        return Outcome("published", [(self._models_topic, key, event)], outcome)

    # -- pieces ---------------------------------------------------------------------
    def _served_revision(
        self, request: RetrainRequested, hashed: str, messages: list[str]
    ) -> Outcome | None:
        """If the store already holds this request's model, the (re-)announcement."""
        needle = commit_message(request, self._tenant_key)
        if needle not in messages:
            return None
        if messages[0] != needle:
            log.info(
                "tenant=%s event_id=%s already served and superseded",
                request.tenant,
                request.event_id,
            )
            return Outcome("duplicates", [])
        latest = self.store.latest(hashed)
        if latest is None:  # pragma: no cover - the store listed it a moment ago
            return None
        card_bytes = self.store.read(latest.paths["card"], revision=latest.revision)
        card = ModelCard.model_validate_json(card_bytes)
        files_sha = {**card.files, "card": sha256_hex(card_bytes)}
        log.info(
            "tenant=%s event_id=%s already published as %s: announcing it again",
            request.tenant,
            request.event_id,
            latest.revision,
        )
        event = self._announcement(request, hashed, latest, card, files_sha, version=len(messages))
        return Outcome("duplicates", [(self._models_topic, request.tenant.encode(), event)])

    def _announcement(
        self,
        request: RetrainRequested,
        hashed: str,
        published: PublishedFiles,
        card: ModelCard,
        sha256: dict[str, str],
        *,
        version: int,
    ) -> ModelPublished:
        decision = card.lineage.get("decision")
        return ModelPublished.model_validate(
            {
                "tenant": request.tenant,
                "tenant_hash": hashed,
                "store_uri": self._store_uri,
                "revision": published.revision,
                "paths": dict(published.paths),
                "sha256": sha256,
                "metrics": finite(card.metrics),
                "decision": decision,
                "request_event_id": request.event_id,
                "reason": request.reason,
                "model_version": max(version, 1),
                "published_at": datetime.now(UTC),
            },
            strict=False,
        )

    def _load_champion(self, request: RetrainRequested, hashed: str) -> Champion | None:
        latest = self.store.latest(hashed)
        if latest is None:
            return None
        try:
            card = self.store.read(latest.paths["card"], revision=latest.revision)
            weights = self.store.read(latest.paths["safetensors"], revision=latest.revision)
            module, model_card = load_model(card, weights, "safetensors")
        except (ArtifactError, StoreNotFound) as exc:
            unusable: Exception = exc
        except StoreError as exc:
            if getattr(exc, "transient", False):
                raise  # the store is down: serve the request again later
            unusable = exc
        else:
            return Champion(module=module, card=model_card, revision=latest.revision)
        # An unusable newest version (NaN weights, a refused file) is no champion: the
        # challenger is judged against the baselines alone, so one bad version cannot
        # make every later retrain of the tenant fail.
        log.warning(
            "tenant=%s champion %s cannot be loaded (%s): the challenger is judged alone",
            request.tenant,
            latest.revision,
            unusable,
        )
        return None

    def _failed(self, request: RetrainRequested, reason: str, detail: str) -> Outcome:
        log.warning(
            "tenant=%s event_id=%s failed: %s: %s", request.tenant, request.event_id, reason, detail
        )
        failed = RetrainFailed.model_validate(
            {
                "request_event_id": request.event_id,
                "tenant": request.tenant,
                "reason": reason,
                "detail": detail[:1000],
                "source": [r.model_dump() for r in request.source],
                "failed_at": datetime.now(UTC),
            },
            strict=False,
        )
        return Outcome("failed", [(self._failures_topic, request.tenant.encode(), failed)])
