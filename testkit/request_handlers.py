"""A retrainer member serving one request by hand, over a file store or the loopback Hub.

`handler(store, rows, replays)` is a `RequestHandler` with a small search, whose
replay answers from `rows` (tenant `gone` has lost its offsets) and records each
tenant it replays; the retrainer tests' `store` fixture gives it a store.
"""

from __future__ import annotations

from pydantic import SecretStr

from kernel.store import ModelStore
from retrainer.pipeline import TrainingConfig
from retrainer.publisher import OutcomeTopics, RequestHandler
from retrainer.replay import ReplayError, TenantRows
from retrainer.search import SearchConfig
from schemas import RetrainRequested
from testkit.retrain_data import tenant_rows

#: `(store uri, store)`, as the retrainer tests' `store` fixture yields it.
StoreFixture = tuple[str, ModelStore]
KEY = SecretStr("test-tenant-key-0123456789abcdef")
SMALL_SEARCH = SearchConfig(
    grid={"lr": [1e-2], "module__hidden_layers": [1], "module__width": [16]},
    n_jobs=1,
    max_epochs=10,
    n_splits=3,
)


def handler(
    store: StoreFixture,
    rows: dict[str, TenantRows] | None = None,
    replays: list[str] | None = None,
    **training: object,
) -> RequestHandler:
    """A retrainer member over `store`; each replay it does is appended to `replays`."""
    uri, model_store = store
    data = rows or {}

    def replay(request: RetrainRequested) -> TenantRows:
        if replays is not None:
            replays.append(request.tenant)
        if request.tenant == "gone":
            raise ReplayError("offsets 0..600 are no longer in the topic")
        return data.get(request.tenant) or tenant_rows()

    return RequestHandler(
        store=model_store,
        store_uri=uri,
        tenant_key=KEY,
        training=TrainingConfig(search=SMALL_SEARCH, min_rows=100, **training),  # type: ignore[arg-type]
        replay=replay,
        topics=OutcomeTopics(
            models="sla.models", failures="sla.retrain.failures", decisions="sla.retrain.decisions"
        ),
    )
