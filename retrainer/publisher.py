"""Serves one retrain request: dedupe, replay, train, decide, publish, and say so.

Runs in the retrainer's worker thread. Returns the events to announce; the service
produces them and only then commits the request, so a crash anywhere in here leaves
the request to be served again. Serving it again is safe: the store remembers which
requests were published (each version's commit message, and the newest ones in the
tenant's index), so a request whose model landed but whose announcement did not is
re-announced, never retrained.

Several retrainers may share one store. A publish names the tenant version it was
decided against (`parent`); the store settles races with other tenants' writers by
itself, and answers `StoreConflict` only when this tenant moved. Then the handler
looks again: the request already served (another member had it: a rebalance) is
re-announced; otherwise the challenger it already trained is judged against the new
champion and published on top of it or kept. No race costs a second search.

The store never sees a request's `event_id`: that is an unkeyed hash of the slug and
the offsets it names, so anyone reading the store could confirm a guessed slug with
it. Commit messages and card lineage carry `request_ref` (an HMAC of the `event_id`
under the tenant key) instead, and the dedupe looks for that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, SecretStr

from kernel.artifacts import ArtifactError, ModelCard, sha256_hex
from kernel.errors import StoreConflict, StoreError, StoreNotFound
from kernel.model_authority import load_version
from kernel.model_report import build_report
from kernel.store import ModelStore, PublishedFiles, TenantHead
from kernel.tenant_hash import request_ref, tenant_hash
from retrainer.cancel import CancelToken
from retrainer.errors import DatasetError, ReplayError, RequestRefused
from retrainer.pipeline import Champion, TrainingConfig, TrainingOutcome, finite, judge, train
from retrainer.replay import TenantRows
from schemas import ChampionKept, ModelPublished, RetrainFailed, RetrainRequested
from schemas.topics import MODELS, RETRAIN_DECISIONS, RETRAIN_FAILURES

__all__ = ["OutcomeTopics", "RequestHandler", "RequestOutcome", "commit_message", "report_files"]

log = logging.getLogger(__name__)

OutcomeKind = Literal["published", "kept", "failed", "duplicates"]

#: Times one request is judged again after its tenant moved under it, then the
#: conflict goes to the service (which serves the request again later).
MAX_TENANT_RACES = 3


@dataclass(frozen=True)
class RequestOutcome:
    """What serving one request came to: its kind and the events that answer it.

    The caller produces `events` (topic, key, event) and only then commits the request.
    """

    kind: OutcomeKind
    events: list[tuple[str, bytes, BaseModel]]
    #: The search and decision, when a model was trained (for metrics: time, fits).
    training: TrainingOutcome | None = None


@dataclass(frozen=True)
class OutcomeTopics:
    """Where a request's answers go: one topic per kind of answer."""

    #: `ModelPublished` (a new version, or a served request announced again).
    models: str = MODELS
    #: `RetrainFailed` (the request can never be served).
    failures: str = RETRAIN_FAILURES
    #: `ChampionKept` (the challenger lost to the champion or a baseline).
    decisions: str = RETRAIN_DECISIONS


def report_files(card_bytes: bytes, tenant_hash: str) -> dict[str, bytes]:
    """The report files to publish with a version, or ``{}`` if rendering failed (logged).

    Rendering can never cost a version: the report is rendered before the store commit
    so that it lands in the SAME commit as the weights and card, and if anything in it
    raises, the version is published without it (a missing picture is a cosmetic loss;
    a lost or delayed model is not). Never raises.
    """
    started = time.perf_counter()
    try:
        files = build_report(card_bytes, tenant_hash)
    except Exception:
        log.exception(
            "tenant_hash=%s report not rendered: the version is published without it",
            tenant_hash,
        )
        return {}
    log.info(
        "tenant_hash=%s report rendered files=%d bytes=%d seconds=%.2f",
        tenant_hash,
        len(files),
        sum(len(data) for data in files.values()),
        time.perf_counter() - started,
    )
    return files


def commit_message(request: RetrainRequested, tenant_key: SecretStr | bytes) -> str:
    """The store's record that `request` was served: its keyed `request_ref`.

    Neither the slug nor the `event_id` (recomputable from a guessed slug) appear.
    """
    ref = request_ref(request.event_id, tenant_key)
    return f"slaops model for request {ref} ({request.reason})"


class RequestHandler:
    """Serves one `RetrainRequested`: dedupe, replay, train, decide, publish.

    `handle` returns a `RequestOutcome` whose events the caller produces (`ModelPublished`,
    `ChampionKept` or `RetrainFailed`); unusable data or a replay range that is gone
    becomes a `RetrainFailed`, not an exception. A request whose model the store
    already holds is re-announced, never retrained. A version is published with its
    report (`report_files`) in the same store commit. Raises `Cancelled` once the run's
    `cancel` token is cancelled (its partition moved): between phases, and within an
    epoch inside the search; store errors propagate. Never
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
        topics: OutcomeTopics,
    ) -> None:
        self.store = store
        self._store_uri = store_uri
        self._tenant_key = tenant_key
        self._training = training
        self._replay = replay
        #: Where the events of each `RequestOutcome` go.
        self.topics = topics

    def handle(
        self, request: RetrainRequested, cancel: CancelToken | None = None
    ) -> RequestOutcome:
        cancel = cancel or CancelToken()
        hashed = tenant_hash(request.tenant, self._tenant_key)
        head = self.store.head(hashed)
        served = self._served_revision(request, hashed, head)
        if served is not None:
            return served
        cancel.check()
        try:
            rows = self._replay(request)
        except RequestRefused as exc:
            return self.failed(request, "invalid_request", str(exc))
        except ReplayError as exc:
            return self.failed(request, "range_unavailable", str(exc))
        log.info(
            "tenant=%s event_id=%s replayed rows=%d (skipped other tenants=%d, invalid=%d)",
            request.tenant,
            request.event_id,
            len(rows),
            rows.other_tenants,
            rows.invalid,
            extra={"tenant": request.tenant, "event_id": request.event_id},
        )
        champion = self._load_champion(request, head)
        ref = request_ref(request.event_id, self._tenant_key)
        cancel.check()
        try:
            trained = train(rows, self._training, cancel=cancel)
        except DatasetError as exc:
            return self.failed(request, exc.reason.value, exc.detail)
        cancel.check()
        outcome = judge(trained, request, self._training, champion, request_ref=ref)
        for race in range(1, MAX_TENANT_RACES + 1):
            if outcome.artifacts is None:  # the champion, or a baseline, was better
                return self._kept(request, outcome, champion)
            try:
                return self._publish(request, hashed, head, outcome)
            except StoreConflict as exc:
                if race == MAX_TENANT_RACES:
                    raise
                # Another writer published this tenant meanwhile: look again, and judge
                # the challenger already trained against what is now the champion.
                log.info(
                    "tenant=%s event_id=%s: the tenant moved while publishing (%s); "
                    "judging again without a new search",
                    request.tenant,
                    request.event_id,
                    exc,
                    extra={"tenant": request.tenant, "event_id": request.event_id},
                )
                head = self.store.head(hashed)
                served = self._served_revision(request, hashed, head)
                if served is not None:
                    return served
                champion = self._load_champion(request, head)
                outcome = judge(trained, request, self._training, champion, request_ref=ref)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- pieces ---------------------------------------------------------------------
    def _publish(
        self,
        request: RetrainRequested,
        hashed: str,
        head: TenantHead | None,
        outcome: TrainingOutcome,
    ) -> RequestOutcome:
        """Publish on top of `head` (the champion it was judged against) and announce it."""
        artifacts = outcome.artifacts
        assert artifacts is not None  # noqa: S101 - the caller publishes only a winner
        files = {"safetensors": artifacts.safetensors, "pt": artifacts.pt, "card": artifacts.card}
        report = report_files(artifacts.card, hashed)  # {} if it failed: publish anyway
        published = self.store.publish(
            hashed,
            {**files, **report},
            message=commit_message(request, self._tenant_key),
            parent=head.revision if head is not None else None,
        )
        sha256 = {kind: sha256_hex(data) for kind, data in files.items()}
        version = head.version + 1 if head is not None else 1
        event = self._announcement(
            request, hashed, published, artifacts.card_model, sha256, version=version
        )
        log.info(
            "tenant=%s event_id=%s published version=%d revision=%s oof f1=%.3f log_loss=%.4f",
            request.tenant,
            request.event_id,
            event.model_version,
            published.revision,
            event.metrics.get("f1", float("nan")),
            event.metrics.get("log_loss", float("nan")),
            extra={
                "tenant": request.tenant,
                "event_id": request.event_id,
                "revision": published.revision,
            },
        )
        return RequestOutcome(
            "published", [(self.topics.models, request.tenant.encode(), event)], outcome
        )

    def _kept(
        self, request: RetrainRequested, outcome: TrainingOutcome, champion: Champion | None
    ) -> RequestOutcome:
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
            extra={"tenant": request.tenant, "event_id": request.event_id},
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
        return RequestOutcome(
            "kept", [(self.topics.decisions, request.tenant.encode(), kept)], outcome
        )

    def _served_revision(
        self, request: RetrainRequested, hashed: str, head: TenantHead | None
    ) -> RequestOutcome | None:
        """If the store already holds this request's model, the (re-)announcement.

        The head's recent messages say whether it was served; for the newest version
        the card decides (its lineage names the request it serves), not the message.
        """
        needle = commit_message(request, self._tenant_key)
        if head is None or needle not in head.recent:
            return None
        if head.recent[0] != needle:
            log.info(
                "tenant=%s event_id=%s already served and superseded",
                request.tenant,
                request.event_id,
                extra={"tenant": request.tenant, "event_id": request.event_id},
            )
            return RequestOutcome("duplicates", [])
        card_bytes = self.store.read(head.files.paths["card"], revision=head.revision)
        card = ModelCard.model_validate_json(card_bytes)
        ref = request_ref(request.event_id, self._tenant_key)
        if card.lineage.get("request_ref") != ref:
            log.warning(
                "tenant=%s event_id=%s: the newest version's message names this request "
                "but its card does not; serving the request",
                request.tenant,
                request.event_id,
                extra={
                    "tenant": request.tenant,
                    "event_id": request.event_id,
                    "revision": head.revision,
                },
            )
            return None
        files_sha = {**card.files, "card": sha256_hex(card_bytes)}
        log.info(
            "tenant=%s event_id=%s already published as %s: announcing it again",
            request.tenant,
            request.event_id,
            head.revision,
            extra={
                "tenant": request.tenant,
                "event_id": request.event_id,
                "revision": head.revision,
            },
        )
        event = self._announcement(
            request, hashed, head.files, card, files_sha, version=head.version
        )
        return RequestOutcome("duplicates", [(self.topics.models, request.tenant.encode(), event)])

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

    def _load_champion(self, request: RetrainRequested, head: TenantHead | None) -> Champion | None:
        if head is None:
            return None
        latest = head.files
        try:
            module, model_card = load_version(self.store, latest)
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
            extra={
                "tenant": request.tenant,
                "event_id": request.event_id,
                "revision": latest.revision,
            },
        )
        return None

    def failed(self, request: RetrainRequested, reason: str, detail: str) -> RequestOutcome:
        """The `RetrainFailed` that ends `request` for good, with its reason."""
        log.warning(
            "tenant=%s event_id=%s failed: %s: %s",
            request.tenant,
            request.event_id,
            reason,
            detail,
            extra={"tenant": request.tenant, "event_id": request.event_id},
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
        return RequestOutcome("failed", [(self.topics.failures, request.tenant.encode(), failed)])
