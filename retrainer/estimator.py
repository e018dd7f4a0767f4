"""`SlaNet`: the scikit-learn estimator (a skorch `NeuralNetBinaryClassifier`) around `SlaMLP`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
import torch
from skorch import NeuralNetBinaryClassifier
from skorch.callbacks import Callback, EarlyStopping, EpochTimer, PassthroughScoring, PrintLog
from skorch.utils import is_dataset

from kernel.mlp import SlaMLP
from retrainer.baselines import persistence_proba
from retrainer.cancel import CancelToken

#: Rows per forward pass when predicting (training uses `batch_size`).
_PREDICT_CHUNK: Final = 65_536


class _ArrayDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor | None]]):
    """Whole-array tensors (float32 X, float32 y or None), built once per fit or predict."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor | None) -> None:
        self.X = X
        self.y = y

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.X[i], None if self.y is None else self.y[i]


class _Batches:
    """Re-iterable mini-batches sliced from `_ArrayDataset` tensors (no per-row collate).

    When `shuffle`, each pass draws a fresh permutation from torch's global RNG, which
    `SlaNet.fit` seeds, so batches are reproducible.
    """

    def __init__(self, data: _ArrayDataset, batch_size: int, shuffle: bool) -> None:
        self.data = data
        self.batch_size = max(1, batch_size)
        self.shuffle = shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        X, y = self.data.X, self.data.y
        n = int(X.shape[0])
        if self.shuffle and n > 1:
            perm = torch.randperm(n)
            X = X[perm]
            y = None if y is None else y[perm]
        for start in range(0, n, self.batch_size):
            stop = start + self.batch_size
            yield X[start:stop], None if y is None else y[start:stop]


def _as_tensor(values: Any) -> torch.Tensor:
    """float32 tensor sharing memory with `values` where possible (copied if read-only)."""
    arr = np.asarray(values, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.as_tensor(arr)


class TailSplit:
    """skorch `train_split` that keeps the NEWEST `fraction` of the rows for validation.

    skorch's default split is random (stratified), which in a time series lets a net
    validate on rows older than some it trained on; this one never does. With too few
    rows for both parts it validates on nothing (early stopping then never fires).
    """

    def __init__(self, fraction: float = 0.15, min_rows: int = 20) -> None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        self.fraction = fraction
        self.min_rows = min_rows

    def __call__(self, dataset: Any, y: Any = None, **_: Any) -> tuple[Any, Any]:
        if not isinstance(dataset, _ArrayDataset):
            raise TypeError("TailSplit needs the whole-array dataset SlaNet builds")
        n = len(dataset)
        n_valid = math.ceil(n * self.fraction)
        if n_valid < self.min_rows or n - n_valid < self.min_rows:
            return dataset, None
        cut = n - n_valid
        y_t = dataset.y
        head = _ArrayDataset(dataset.X[:cut], None if y_t is None else y_t[:cut])
        tail = _ArrayDataset(dataset.X[cut:], None if y_t is None else y_t[cut:])
        return head, tail

    def __repr__(self) -> str:
        return f"TailSplit(fraction={self.fraction}, min_rows={self.min_rows})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TailSplit):
            return NotImplemented
        return (self.fraction, self.min_rows) == (other.fraction, other.min_rows)

    def __hash__(self) -> int:
        return hash((self.fraction, self.min_rows))


@contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run with `n_threads` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if n_threads is not None and n_threads != previous:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class _CancelCheck(Callback):
    """Raises `Cancelled` after an epoch once the job's token was cancelled: a search
    stops within an epoch of a revocation (`error_score="raise"` ends the search)."""

    def __init__(self, token: CancelToken) -> None:
        self.token = token

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        self.token.check()


class _BestEpoch(EarlyStopping):
    """Early stopping on the validation tail, restoring the best epoch; silent, and a
    no-op when a fit has no validation rows."""

    def __init__(self, patience: int) -> None:
        super().__init__(monitor="valid_loss", patience=patience, load_best=True, sink=_quiet)

    def on_epoch_end(self, net: Any, **kwargs: Any) -> None:
        if net.history[-1].get("valid_loss") is None:
            return
        super().on_epoch_end(net, **kwargs)


def _quiet(*_: Any) -> None:
    """Sink for skorch's early-stopping message."""


#: skorch parameters whose defaults SlaNet changes (skorch's: lr 0.01, 10 epochs, 128 rows).
SKORCH_DEFAULTS: Final[Mapping[str, Any]] = {
    "criterion": torch.nn.BCEWithLogitsLoss,
    "optimizer": torch.optim.Adam,
    "lr": 1e-3,
    "max_epochs": 100,
    "batch_size": 64,
    "verbose": 0,
}


@dataclass(frozen=True)
class NetParams:
    """`SlaNet`'s own parameters beyond skorch's, with their defaults (`SlaNet` says what
    each does). `SlaNet` takes them as keywords and keeps them as plain attributes."""

    seed: int = 0
    balance_classes: bool = False
    num_threads: int | None = 1
    valid_fraction: float = 0.15
    patience: int = 8
    offset_column: int | None = None
    cancel: CancelToken | None = None


_NET_PARAMS: Final = tuple(f.name for f in fields(NetParams))


class SlaNet(NeuralNetBinaryClassifier):
    """skorch binary classifier around `SlaMLP`, made for cross-validated search.

    Per `fit`, from the data passed to that fit only:

    * the module's normalisation buffers get the column mean/std of `X`
      (`feature_mean_`, `feature_std_`), and `module__n_features` defaults to `X`'s width;
    * with `balance_classes`, `criterion__pos_weight` defaults to n_neg / n_pos
      (`pos_weight_`; 1.0 when a class is missing), unless given explicitly;
    * torch's RNG is seeded with `seed` (inside `torch.random.fork_rng`, so the
      caller's RNG state is untouched) and torch runs `num_threads` threads (one per
      joblib worker by default; the caller's setting is restored afterwards).

    Data is fed from whole tensors sliced into batches (no per-row `Dataset` and
    `DataLoader` collate); training batches are shuffled per epoch. Each fit keeps
    the newest `valid_fraction` of ITS rows as a time-ordered validation tail
    (`TailSplit`) and stops when the validation log loss has not improved for
    `patience` epochs, restoring the best epoch's weights; inside a CV fold that tail
    is part of the fold's training rows, so the fold's validation rows stay unseen.
    `valid_fraction=0` trains all `max_epochs` on every row.

    With `offset_column` (the input column of t's breach flag), the module starts from
    persistence: P(breach at t+h | breach at t), counted on the fit's rows, is added to
    its output as a logit offset (`offset_logit_`), so the network learns corrections to
    "this interval's breach" and early stopping keeps it near persistence unless the
    rows show better.

    `balance_classes` (off by default) weights breaches by n_neg / n_pos in the loss;
    it skews probabilities towards breach, so only use it with a calibration step.

    Parameters route the skorch way: `lr`, `max_epochs`, `batch_size`,
    `module__hidden_layers`, `module__width`, `module__dropout`, `module__activation`,
    `optimizer__weight_decay`, ... Every parameter, skorch's and SlaNet's own
    (`NetParams`), is a keyword of its own, as scikit-learn's estimator contract wants:
    `clone`, `set_params` and the searches set them by name. So they are declared in
    `NetParams` and `SKORCH_DEFAULTS` (the skorch defaults SlaNet changes) rather than
    one by one in the signature.
    """

    def __init__(
        self,
        module: type[torch.nn.Module] | torch.nn.Module = SlaMLP,
        *,
        train_split: Any = None,
        **params: Any,
    ) -> None:
        own = NetParams(**{name: params.pop(name) for name in _NET_PARAMS if name in params})
        if train_split is None and own.valid_fraction > 0:
            train_split = TailSplit(own.valid_fraction)
        super().__init__(module, train_split=train_split, **{**SKORCH_DEFAULTS, **params})
        for name in _NET_PARAMS:  # plain attributes: skorch's get_params lists them
            setattr(self, name, getattr(own, name))

    @property
    def _default_callbacks(self) -> list[tuple[str, Any]]:
        # skorch's, less `valid_acc`: under CV there is no internal validation set to
        # score (`valid_loss` stays for callers who do set a `train_split`).
        return [
            ("epoch_timer", EpochTimer()),
            ("train_loss", PassthroughScoring(name="train_loss", on_train=True)),
            ("valid_loss", PassthroughScoring(name="valid_loss")),
            ("early_stopping", _BestEpoch(patience=self.patience)),
            ("print_log", PrintLog()),
            *([("cancel", _CancelCheck(self.cancel))] if self.cancel is not None else []),
        ]

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> SlaNet:
        # Nothing learned from an earlier fit may leak into this one.
        self.feature_mean_ = self.feature_std_ = self.pos_weight_ = self.offset_logit_ = None
        if not is_dataset(X):
            X_arr = np.asarray(X, dtype=np.float32)
            if X_arr.ndim != 2:
                raise ValueError(f"X must be 2-D, got shape {X_arr.shape}")
            self.n_features_in_ = int(X_arr.shape[1])
            self.feature_mean_ = X_arr.mean(axis=0, dtype=np.float64).astype(np.float32)
            self.feature_std_ = X_arr.std(axis=0, dtype=np.float64).astype(np.float32)
            if y is not None:
                y_arr = np.asarray(y)
                n_pos = int(np.count_nonzero(y_arr))
                n_neg = int(y_arr.shape[0]) - n_pos
                self.pos_weight_ = n_neg / n_pos if n_pos and n_neg else 1.0
                if self.offset_column is not None:
                    p = persistence_proba(X_arr[:, self.offset_column], y_arr)
                    self.offset_logit_ = np.log(p / (1.0 - p)).astype(np.float32)
            X = X_arr
        with torch_threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            super().fit(X, y, **fit_params)
        return self

    def initialize_module(self) -> SlaNet:
        kwargs = self.get_params_for("module")
        n_features = getattr(self, "n_features_in_", None)
        if n_features is not None and "n_features" not in kwargs and isinstance(self.module, type):
            kwargs["n_features"] = n_features
        self.module_ = self.initialized_instance(self.module, kwargs)
        mean, std = getattr(self, "feature_mean_", None), getattr(self, "feature_std_", None)
        if mean is not None and std is not None and hasattr(self.module_, "set_normalization"):
            self.module_.set_normalization(mean, std)
        offset = getattr(self, "offset_logit_", None)
        if offset is not None and self.offset_column is not None:
            self.module_.set_offset(self.offset_column, offset)
        return self

    def initialize_criterion(self) -> SlaNet:
        kwargs = self.get_params_for("criterion")
        pos_weight = getattr(self, "pos_weight_", None)
        if self.balance_classes and pos_weight is not None and "pos_weight" not in kwargs:
            kwargs["pos_weight"] = torch.tensor(pos_weight, dtype=torch.float32)
        self.criterion_ = self.initialized_instance(self.criterion, kwargs)
        return self

    def _set_training(self, training: bool = True) -> None:
        # skorch flips every module's mode on every batch; skip the recursive
        # `train()` walk when the mode is already right (it is, after the first batch).
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, torch.nn.Module) and module.training != training:
                module.train(training)

    def get_dataset(self, X: Any, y: Any = None) -> Any:
        if is_dataset(X):
            return super().get_dataset(X, y)
        y_t = None if y is None else _as_tensor(y)
        return _ArrayDataset(_as_tensor(X), y_t)

    def get_iterator(self, dataset: Any, training: bool = False) -> Any:
        if not isinstance(dataset, _ArrayDataset):
            return super().get_iterator(dataset, training=training)
        if training:
            batch_size = self.get_params_for("iterator_train").get("batch_size", self.batch_size)
            if batch_size == -1:
                batch_size = len(dataset)
            return _Batches(dataset, batch_size, shuffle=True)
        return _Batches(dataset, _PREDICT_CHUNK, shuffle=False)
