"""`slaops models list` and `slaops models show TENANT`: each tenant's versions and decision.

The store is the authority on versions: a tenant's newest version, its count and its
parent are the store's `head`; each version's forecaster, metrics against the
baselines and evidence are its card, read at its revision (validated, size-capped).
Older versions are found through each card's lineage (the champion it replaced),
checked against the store's parent where the store names one. The topics say only
what the store cannot: which tenants there are, when each version was announced
(a `ModelPublished` of that very revision), and the last decision on a request and its
reason (`ModelPublished`, `ChampionKept` on the decisions topic, `RetrainFailed` on the
failures topic). They are read from the beginning by one reader outside any group,
bounded by count and time as `slaops report` reads them, each record validated.

Tenants are named by slug only with the tenant key (an announcement counts for a slug
only under the slug's own HMAC); without it, by the hash the announcements name.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TextIO

from confluent_kafka import KafkaException
from pydantic import BaseModel, Field, SecretStr, ValidationError

from kernel.artifacts import ModelCard
from kernel.errors import BrokerError, ConfigError, StoreError
from kernel.kafka import assign_all, base_config, is_record, make_reader
from kernel.logs import json_visible, visible
from kernel.model_report.markdown import text as md_text
from kernel.settings import StoreSettings, TopicName
from kernel.store import ModelStore, model_paths, report_paths
from kernel.store.protocol import ROOT_README, RootReadme
from kernel.tenant_hash import KEY_FILE_NAME, load_or_create_local_key, tenant_hash
from schemas import ChampionKept, ModelPublished, RetrainFailed, topics

#: Largest card read back from the store, and largest event read from a topic.
MAX_CARD_BYTES = 4 * 1024 * 1024
_EVENT_BYTES = 256 * 1024
_HASH = re.compile(r"^[0-9a-f]{64}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: The metrics a version is judged by, and the baselines it is compared with.
HEADLINE = ("log_loss", "brier", "f1", "pr_auc")
BASELINES = ("prior", "persistence", "logistic")


class ModelsSettings(StoreSettings):
    """`slaops models`: the store, the tenant key (for slugs) and the topics it reads."""

    actions: ClassVar[dict[str, tuple[str, tuple[tuple[str, str], ...]]]] = {
        "list": ("every tenant the topics name: its newest version and last decision", ()),
        "show": (
            "one tenant's versions, newest first, and its last decision with its reason",
            (("tenant", "the tenant's slug (needs the tenant key) or its 64-hex hash"),),
        ),
        "publish-index": (
            "write the store's root README.md: each tenant's card by hash, with its newest "
            "version and log-loss skill vs prior (run it in batches, e.g. hourly)",
            (),
        ),
    }

    models_topic: TopicName = Field(default=topics.MODELS, description="ModelPublished.")
    decisions_topic: TopicName = Field(
        default=topics.RETRAIN_DECISIONS, description="Kept champions."
    )
    failures_topic: TopicName = Field(default=topics.RETRAIN_FAILURES, description="Failures.")
    read_timeout_s: float = Field(
        default=30.0, gt=0, le=3_600, description="Longest time spent reading the topics."
    )
    idle_s: float = Field(
        default=2.0, gt=0, le=600, description="Reading stops when the topics are quiet this long."
    )
    max_records: int = Field(
        default=500_000, ge=1, le=50_000_000, description="Most records read from the topics."
    )
    max_tenants: int = Field(
        default=1_000, ge=1, le=100_000, description="Most tenants listed (the first seen)."
    )
    versions: int = Field(
        default=10, ge=1, le=64, description="Versions `show` reads back, newest first."
    )
    json_output: bool = Field(
        default=False,
        description="Print JSON instead of text (also --json).",
        json_schema_extra={"flags": ["--json"]},
    )

    def display_key(self) -> SecretStr | None:
        """The tenant key if one is configured (or kept in local mode); never made here."""
        if self.tenant_key is not None:
            return self.tenant_secret()
        if self.local_mode and (self.data_dir / KEY_FILE_NAME).is_file():
            return load_or_create_local_key(self.data_dir)
        return None


@dataclass
class Outcomes:
    """One tenant's outcome events, in topic order."""

    published: list[ModelPublished] = field(default_factory=list)
    kept: list[ChampionKept] = field(default_factory=list)
    failed: list[RetrainFailed] = field(default_factory=list)


@dataclass
class OutcomeRead:
    by_slug: dict[str, Outcomes] = field(default_factory=dict)
    records: int = 0
    unreadable: int = 0
    tenants_dropped: int = 0
    stopped_by: str = "quiet"


def read_outcomes(settings: ModelsSettings) -> OutcomeRead:
    """Every valid outcome event of the three topics, by tenant slug (bounded).

    Raises `BrokerError` when the broker stops answering while it reads.
    """
    kinds: dict[str, type[BaseModel]] = {
        settings.models_topic: ModelPublished,
        settings.decisions_topic: ChampionKept,
        settings.failures_topic: RetrainFailed,
    }
    out = OutcomeRead()
    reader = make_reader(base_config(settings), "slaops-models")
    try:
        assignment = assign_all(
            reader, kinds, timeout_s=min(settings.read_timeout_s, settings.connect_timeout_s)
        )
        started = last = time.monotonic()
        while assignment:
            now = time.monotonic()
            if now - last > settings.idle_s:
                break
            if now - started > settings.read_timeout_s:
                out.stopped_by = f"timeout ({settings.read_timeout_s:g} s)"
                break
            if out.records >= settings.max_records:
                out.stopped_by = f"max_records ({settings.max_records})"
                break
            batch = reader.consume(min(10_000, settings.max_records - out.records), 0.2)
            if batch:
                last = time.monotonic()
            for message in batch:
                if is_record(message):
                    out.records += 1
                    _take(out, kinds.get(message.topic() or ""), message.value() or b"", settings)
    except KafkaException as exc:
        raise BrokerError(
            f"reading the outcome topics from {settings.require_bootstrap()} failed: {exc}"
        ) from exc
    finally:
        reader.close()
    return out


def _take(
    out: OutcomeRead, kind: type[BaseModel] | None, value: bytes, settings: ModelsSettings
) -> None:
    try:
        if kind is None or len(value) > _EVENT_BYTES:
            raise ValueError("unknown topic or oversize record")
        event = kind.model_validate_json(value)
    except (ValidationError, ValueError):
        out.unreadable += 1
        return
    slug = getattr(event, "tenant", None)
    if slug is None:
        return  # a failure of a request that could not be read names no tenant
    outcomes = out.by_slug.get(slug)
    if outcomes is None:
        if len(out.by_slug) >= settings.max_tenants:
            out.tenants_dropped += 1
            return
        outcomes = out.by_slug[slug] = Outcomes()
    if isinstance(event, ModelPublished):
        outcomes.published.append(event)
    elif isinstance(event, ChampionKept):
        outcomes.kept.append(event)
    elif isinstance(event, RetrainFailed):
        outcomes.failed.append(event)


@dataclass
class Tenant:
    """A tenant as shown: its label (slug with the key, else hash), hash and outcomes."""

    label: str
    slug: str | None
    hash: str | None
    outcomes: Outcomes


def tenants(read: OutcomeRead, key: SecretStr | None) -> list[Tenant]:
    """Each tenant the topics name, with the hash its versions are stored under.

    With the key, the slug's own HMAC, and only announcements under it count; without,
    the one hash its announcements name (a slug whose announcements disagree has none).
    """
    found: dict[str, Tenant] = {}
    for slug in sorted(read.by_slug):
        outcomes = read.by_slug[slug]
        if key is not None:
            hashed: str | None = tenant_hash(slug, key)
            outcomes.published = [m for m in outcomes.published if m.tenant_hash == hashed]
            found[slug] = Tenant(slug, slug, hashed, outcomes)
            continue
        hashes = {m.tenant_hash for m in outcomes.published}
        hashed = hashes.pop() if len(hashes) == 1 else None
        if hashed is None:
            found[f"?{slug}"] = Tenant("(no model; tenant key needed)", None, None, outcomes)
        elif hashed in found:  # two slugs claim one hash: neither is believed
            found[hashed].outcomes = Outcomes()
        else:
            found[hashed] = Tenant(hashed, None, hashed, outcomes)
    return sorted(found.values(), key=lambda t: (t.hash is None, t.label))


def last_decision(outcomes: Outcomes) -> dict[str, Any] | None:
    """The newest outcome of the tenant's requests: what was decided and why."""
    candidates: list[tuple[datetime, dict[str, Any]]] = []
    for m in outcomes.published:
        d = m.decision
        candidates.append(
            (
                m.published_at,
                {
                    "outcome": "published",
                    "at": m.published_at.isoformat(),
                    "request": m.reason,
                    "verdict": d.verdict,
                    "why": _decision_why(d.rule, d.challenger_score, d.champion_score, d.detail),
                    "revision": m.revision,
                },
            )
        )
    for k in outcomes.kept:
        d = k.decision
        if d.verdict == "baseline_better":
            why = f"lost to the {d.baseline} baseline" + (f" ({d.detail})" if d.detail else "")
        elif d.verdict == "insufficient_evidence":
            why = "too little evidence to judge" + (f" ({d.detail})" if d.detail else "")
        else:
            why = _decision_why(d.rule, d.challenger_score, d.champion_score, d.detail)
        candidates.append(
            (
                k.decided_at,
                {
                    "outcome": "kept",
                    "at": k.decided_at.isoformat(),
                    "request": k.reason,
                    "verdict": d.verdict,
                    "why": why,
                    "revision": k.champion_revision,
                },
            )
        )
    for f in outcomes.failed:
        candidates.append(
            (
                f.failed_at,
                {
                    "outcome": "failed",
                    "at": f.failed_at.isoformat(),
                    "request": None,
                    "verdict": f.reason,
                    "why": f.detail,
                    "revision": None,
                },
            )
        )
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def _decision_why(rule: str, challenger: float, champion: float | None, detail: str) -> str:
    against = "no champion" if champion is None else f"champion {champion:.4f}"
    text = f"{rule}: challenger {challenger:.4f} vs {against}"
    return f"{text} ({detail})" if detail else text


def describe_version(
    version: int, revision: str, card: ModelCard | None, announced: datetime | None
) -> dict[str, Any]:
    """One version as shown: the store's revision and its card's headline."""
    row: dict[str, Any] = {
        "version": version,
        "revision": revision,
        "announced_at": None if announced is None else announced.isoformat(),
    }
    if card is None:
        return row
    skill = {b: card.skill.get(f"log_loss_skill_vs_{b}") for b in BASELINES}
    row.update(
        forecaster=card.forecaster,
        forecaster_input=card.forecaster_input,
        trained_for=_text(card.lineage.get("reason")),
        horizon=card.horizon,
        horizon_s=card.horizon_s,
        threshold=card.threshold,
        metrics={m: card.metrics.get(m) for m in HEADLINE},
        baselines={b: card.baselines[b].get("log_loss") for b in BASELINES if b in card.baselines},
        log_loss_skill=skill,
        loses_to=sorted(b for b, v in skill.items() if isinstance(v, float) and v < 0),
        evidence={k: v for k, v in card.evidence.items() if _finite(v)},
    )
    return row


def _text(value: object) -> str | None:
    return value[:100] if isinstance(value, str) else None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def read_card(store: ModelStore, path: str, revision: str) -> ModelCard:
    return ModelCard.model_validate_json(
        store.read(path, revision=revision, max_bytes=MAX_CARD_BYTES)
    )


def versions(store: ModelStore, hashed: str, tenant: Tenant | None, limit: int) -> dict[str, Any]:
    """The tenant's newest `limit` versions as the store holds them, newest first."""
    head = store.head(hashed)
    if head is None:
        return {"count": 0, "versions": [], "problems": []}
    announced = (
        {} if tenant is None else {m.revision: m.published_at for m in tenant.outcomes.published}
    )
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    revision: str | None = head.revision
    number = head.version
    seen: set[str] = set()
    while revision is not None and len(rows) < limit and number >= 1 and revision not in seen:
        seen.add(revision)
        try:
            card: ModelCard | None = read_card(store, head.files.paths["card"], revision)
        except (StoreError, ValidationError) as exc:
            card = None
            problems.append(f"v{number} {revision[:12]}: card unreadable: {_first_line(exc)}")
        rows.append(describe_version(number, revision, card, announced.get(revision)))
        replaced = _champion(card)
        if not rows[1:] and head.parent is not None and replaced not in (None, head.parent):
            problems.append(
                f"v{number}: its card names {replaced[:12]} as the version it replaced, the "
                f"store {head.parent[:12]}: following the store"
            )
        revision = head.parent if len(rows) == 1 and head.parent is not None else replaced
        number -= 1
    return {"count": head.version, "versions": rows, "problems": problems}


def _champion(card: ModelCard | None) -> str | None:
    """The revision the card's lineage says this version replaced (checked), or None."""
    if card is None:
        return None
    champion = card.lineage.get("champion")
    revision = champion.get("revision") if isinstance(champion, dict) else None
    if isinstance(revision, str) and _REVISION.fullmatch(revision):
        return revision
    return None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def resolve(name: str, found: list[Tenant], key: SecretStr | None) -> Tenant:
    """The tenant `name` means: a 64-hex hash, or a slug (hashed with the key)."""
    if _HASH.fullmatch(name):
        for tenant in found:
            if tenant.hash == name:
                return tenant
        return Tenant(name, None, name, Outcomes())
    if key is None:
        raise ConfigError(
            f"{visible(name[:80])!s} is not a tenant hash, and a slug needs the tenant key: "
            "set SLAOPS_TENANT_KEY (or --tenant-key), or give the 64-hex tenant hash"
        )
    for tenant in found:
        if tenant.slug == name:
            return tenant
    return Tenant(name, name, tenant_hash(name, key), Outcomes())


def run_models(
    settings: ModelsSettings, action: str, tenant: str | None = None, out: TextIO | None = None
) -> int:
    """`list`, `show` or `publish-index`: 0 when done, 1 when `show`'s tenant has no
    version in the store."""
    out = sys.stdout if out is None else out
    store = settings.open_model_store()
    key = settings.display_key()
    read = read_outcomes(settings)
    found = tenants(read, key)
    source = {
        "store": store.uri,
        "bootstrap": settings.require_bootstrap(),
        "named_by": "slug" if key is not None else "hash",
        "records": read.records,
        "unreadable": read.unreadable,
        "stopped_by": read.stopped_by,
        "tenants_dropped": read.tenants_dropped,
    }
    if action == "publish-index":
        return publish_index(store, found, settings, source, out)
    if action == "show":
        if tenant is None:
            raise ConfigError("show needs a TENANT: its slug or its hash")
        chosen = resolve(tenant, found, key)
        hashed = chosen.hash or ""  # resolve always names a hash
        shown = {
            "tenant": chosen.slug if key is not None else None,
            "tenant_hash": hashed,
            **versions(store, hashed, chosen, settings.versions),
            "last_decision": last_decision(chosen.outcomes),
        }
        _emit(settings, out, {"source": source, "tenant": shown}, _show_text)
        return 0 if shown["count"] else 1
    rows = []
    for each in found:
        row: dict[str, Any] = {
            "tenant": each.slug if key is not None else None,
            "tenant_hash": each.hash,
            "last_decision": last_decision(each.outcomes),
        }
        if each.hash is not None:
            try:
                row.update(versions(store, each.hash, each, 1))
            except StoreError as exc:
                row.update(count=None, versions=[], problems=[f"store: {_first_line(exc)}"])
        rows.append(row)
    _emit(settings, out, {"source": source, "tenants": rows}, _list_text)
    return 0


#: The most tenants the root README lists (the rest are counted, not listed).
MAX_INDEX_ROWS = 10_000


def publish_index(
    store: ModelStore,
    found: list[Tenant],
    settings: ModelsSettings,
    source: dict[str, Any],
    out: TextIO,
) -> int:
    """Write the store's root README (`index_markdown`) from every tenant with a version.

    The tenants are those the topics name (`tenants`), listed by hash only, whatever
    key is configured; each one's newest version and skill are the store's head and
    its card there. One write (one Hub commit, skipped when nothing changed).
    """
    if not isinstance(store, RootReadme):
        raise ConfigError(f"the store {store.uri} keeps no root README")
    rows: list[dict[str, Any]] = []
    for hashed in sorted({t.hash for t in found if t.hash is not None}):
        try:
            shown = versions(store, hashed, None, 1)
        except StoreError as exc:
            shown = {"count": None, "versions": [], "problems": [f"store: {_first_line(exc)}"]}
        if shown["count"] != 0:
            rows.append({"tenant_hash": hashed, **shown})
    page = index_markdown(rows, store.uri)
    store.write_root_readme(page)
    written = {"path": ROOT_README, "tenants": len(rows), "bytes": len(page.encode())}
    _emit(
        settings,
        out,
        {"source": source, "index": written},
        lambda data: [
            f"wrote {ROOT_README} in {data['source']['store']}: {data['index']['tenants']} "
            f"tenants, {data['index']['bytes']} bytes",
            _source_text(data["source"]),
        ],
    )
    return 0


def index_markdown(rows: list[dict[str, Any]], uri: str) -> str:
    """The root README: a table of the tenants' cards by hash, newest version, skill.

    Every value is the store's or a validated card's: hashes and revisions are checked
    hex or revision ids, the forecaster goes through the card renderer's `text`.
    """
    lines = [
        "---",
        "library_name: pytorch",
        "pipeline_tag: tabular-classification",
        "tags: [slaops, sla-breach-forecasting, tabular-classification]",
        "---",
        "",
        "# slaops SLA-breach forecasters",
        "",
        "One forecaster per tenant, each named by the HMAC hash of its tenant's slug (no "
        "slug is stored here). Each row links the tenant's model card (`.md`, with its "
        "plots) and its machine-readable card (`.json`); the version is the tenant's "
        "newest in this repo, the skill its holdout log-loss skill over the prior "
        "baseline (positive: better; LOSES: below zero). Written by "
        "`slaops models publish-index`, in batches: a tenant's newest version may be "
        "newer than its row here.",
        "",
        f"{len(rows)} tenant(s).",
        "",
        "| tenant (hash) | version | revision | forecaster | log-loss skill vs prior | card |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows[:MAX_INDEX_ROWS]:
        hashed = str(row["tenant_hash"])
        newest = row["versions"][0] if row.get("versions") else {}
        skill = newest.get("log_loss_skill", {}).get("prior")
        shown = _num(skill, "+.3f") + (" LOSES" if isinstance(skill, float) and skill < 0 else "")
        count = f"v{row['count']}" if row.get("count") else "-"
        revision = f"`{str(newest['revision'])[:12]}`" if newest.get("revision") else "-"
        forecaster = md_text(newest["forecaster"]) if newest.get("forecaster") else "-"
        card = model_paths(hashed)["card"]
        report = report_paths(hashed)["report"]
        lines.append(
            f"| `{hashed}` | {count} | {revision} | {forecaster} | {shown} | "
            f"[card]({report}) · [json]({card}) |"
        )
    if len(rows) > MAX_INDEX_ROWS:
        lines += ["", f"{len(rows) - MAX_INDEX_ROWS} more tenant(s) not listed."]
    lines += ["", f"Store: `{md_text(uri)}`.", ""]
    return "\n".join(lines)


def _emit(settings: ModelsSettings, out: TextIO, data: dict[str, Any], text: Any) -> None:
    if settings.json_output:
        print(json_visible(json.dumps(data, allow_nan=False)), file=out)
        return
    for line in text(data):
        print(visible(line), file=out)


def _num(value: object, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def _evidence(value: object) -> str:
    return format(value, ".4g") if isinstance(value, float) else str(value)


def _label(row: dict[str, Any]) -> str:
    if row.get("tenant"):
        return str(row["tenant"])
    return str(row["tenant_hash"])[:16] if row.get("tenant_hash") else "(no model; key needed)"


def _decision_text(decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "no decision on the topics"
    return f"{decision['outcome']} {decision['at'][:19]}: {decision['verdict']}: {decision['why']}"


def _list_text(data: dict[str, Any]) -> list[str]:
    lines = [
        f"{'tenant':<24} {'ver':>4} {'forecaster':<15} {'f1':>6} {'log_loss':>8} "
        f"{'skill vs prior/persist/logistic':<32} last decision"
    ]
    for row in data["tenants"]:
        newest = row["versions"][0] if row.get("versions") else {}
        skill = newest.get("log_loss_skill", {})
        skills = "/".join(_num(skill.get(b), "+.3f") for b in BASELINES)
        if newest.get("loses_to"):
            skills += " LOSES"
        metrics = newest.get("metrics", {})
        count = f"v{row['count']}" if row.get("count") else "-"
        lines.append(
            f"{_label(row)[:24]:<24} {count:>4} "
            f"{str(newest.get('forecaster', '-')):<15} {_num(metrics.get('f1')):>6} "
            f"{_num(metrics.get('log_loss'), '.4f'):>8} {skills:<32} "
            f"{_decision_text(row['last_decision'])}"
        )
        lines += [f"  ! {problem}" for problem in row.get("problems", [])]
    lines.append(_source_text(data["source"]))
    return lines


def _show_text(data: dict[str, Any]) -> list[str]:
    t = data["tenant"]
    lines = [
        f"tenant {t['tenant'] or '(by hash)'}  hash {t['tenant_hash']}",
        f"versions in the store: {t['count']}",
        f"last decision: {_decision_text(t['last_decision'])}",
    ]
    for v in t["versions"]:
        lines.append("")
        lines.append(
            f"v{v['version']}  revision {v['revision']}  announced {v['announced_at'] or '-'}"
        )
        if "forecaster" not in v:
            continue
        what = v["forecaster"] + (f" on {v['forecaster_input']}" if v["forecaster_input"] else "")
        lines.append(
            f"  forecaster {what}, horizon {v['horizon']} intervals"
            + (f" ({v['horizon_s']:g} s)" if v["horizon_s"] else "")
            + f", threshold {_num(v['threshold'])}, trained for {v['trained_for'] or '-'}"
        )
        lines.append(
            "  metrics " + ", ".join(f"{m} {_num(v['metrics'][m], '.4f')}" for m in HEADLINE)
        )
        lines.append(
            "  log loss of the baselines "
            + (", ".join(f"{b} {_num(x, '.4f')}" for b, x in v["baselines"].items()) or "-")
        )
        lines.append(
            "  log-loss skill "
            + ", ".join(f"vs {b} {_num(x, '+.3f')}" for b, x in v["log_loss_skill"].items())
            + (f"  LOSES to {', '.join(v['loses_to'])}" if v["loses_to"] else "")
        )
        lines.append(
            "  evidence "
            + (", ".join(f"{k} {_evidence(x)}" for k, x in sorted(v["evidence"].items())) or "-")
        )
    lines += [f"  ! {problem}" for problem in t["problems"]]
    lines.append(_source_text(data["source"]))
    return lines


def _source_text(source: dict[str, Any]) -> str:
    return (
        f"(store {source['store']}; {source['records']} records read from "
        f"{source['bootstrap']}, {source['unreadable']} unreadable, stopped: "
        f"{source['stopped_by']}; tenants named by {source['named_by']})"
    )
