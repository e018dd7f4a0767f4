"""The one SLA-breach forecasting architecture both services share.

The retrainer fits :class:`SlaMLP` (through skorch, ``module__*`` parameters map
onto the constructor) and the consumer rebuilds it from a model card with
:func:`build_module`. Input normalisation lives in registered buffers, so the
``state_dict`` together with the card's architecture reproduces predictions
exactly; there is no separate scaler to ship.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}
#: What each activation module's `forward` computes (its defaults), as a function.
_ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": functional.relu,
    "gelu": functional.gelu,
    "tanh": torch.tanh,
    "silu": functional.silu,
}

N_FEATURES_RANGE = (1, 256)
HIDDEN_LAYERS_RANGE = (0, 8)
WIDTH_RANGE = (1, 1024)
MIN_STD = 1e-6
#: Normalised inputs are clamped to [-MAX_Z, MAX_Z].
MAX_Z = 6.0

ARCHITECTURE_KEYS = frozenset({"n_features", "hidden_layers", "width", "dropout", "activation"})
#: Keys a card may leave out (it was written before them); absent, they are False.
OPTIONAL_ARCHITECTURE_KEYS = frozenset({"gated"})
#: Shrinkage toward the prior starts this many training standard deviations beyond the
#: range a watched input took in training, and is complete `OOD_WIDTH` further out.
OOD_MARGIN = 1.0
OOD_WIDTH = 3.0


def _check_int(name: str, value: object, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    lo, hi = bounds
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _check_dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"dropout must be a number, got {type(value).__name__} {value!r}")
    p = float(value)
    if not (math.isfinite(p) and 0.0 <= p < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {value}")
    return p


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {type(value).__name__} {value!r}")
    return value


def _check_activation(value: object) -> str:
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {value!r}")
    return value


class HiddenLayers(nn.Module):
    """The hidden layers, each ``Linear`` -> activation -> dropout (identity at p=0).

    The ``Linear`` modules are named as ``nn.Sequential(Linear, activation, Dropout,
    ...)`` names them ("0", "3", ...), so ``state_dict`` keys (``body.0.weight``) do not
    depend on the dropout rate and are those of every published model. The activation and
    the dropout hold no state: they are applied as the functions their modules call, not
    kept as modules (a consumer holds a network per tenant, and each module object costs
    ~2 KB: 4.6 KB a layer saved).

    >>> layers = HiddenLayers([nn.Linear(3, 4), nn.Linear(4, 4)], "relu", 0.0)
    >>> [name for name, _ in layers.named_children()], len(layers)
    (['0', '3'], 6)
    """

    def __init__(self, linears: list[nn.Linear], activation: str, dropout: float) -> None:
        super().__init__()
        for i, layer in enumerate(linears):
            self.add_module(str(3 * i), layer)
        self.activation = _check_activation(activation)
        self.dropout = _check_dropout(dropout)
        self._function = _ACTIVATION_FUNCTIONS[self.activation]

    def __len__(self) -> int:
        return 3 * len(self._modules)

    def __iter__(self) -> Iterator[nn.Module]:
        """The layers as the ``nn.Sequential`` this replaces holds them (the activation
        and dropout modules made for the occasion: they hold no state)."""
        for layer in self._modules.values():
            yield from (layer, ACTIVATIONS[self.activation](), nn.Dropout(self.dropout))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self._modules.values():
            assert layer is not None  # noqa: S101 - only Linear layers are added
            h = functional.dropout(self._function(layer(h)), self.dropout, self.training)
        return h


class SlaMLP(nn.Module):
    """MLP forecasting P(SLA breach at t+h); input normalisation lives in buffers so
    state_dict + card reproduce predictions.

    ``forward`` returns logits of shape ``(n,)`` (for ``BCEWithLogitsLoss`` and
    skorch's ``NeuralNetBinaryClassifier``); apply a sigmoid for probabilities.

    >>> m = SlaMLP(n_features=3, hidden_layers=2, width=4)
    >>> m(torch.zeros(5, 3)).shape
    torch.Size([5])
    >>> build_module(m.architecture()).architecture() == m.architecture()
    True
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    offset_column: torch.Tensor
    offset_logit: torch.Tensor
    gate_column: torch.Tensor
    feature_low: torch.Tensor
    feature_high: torch.Tensor
    ood_watch: torch.Tensor
    prior_logit: torch.Tensor

    def __init__(
        self,
        n_features: int = 6,
        hidden_layers: int = 1,
        width: int = 32,
        dropout: float = 0.0,
        activation: str = "relu",
        gated: bool = False,
    ) -> None:
        super().__init__()
        self.n_features = _check_int("n_features", n_features, N_FEATURES_RANGE)
        self.hidden_layers = _check_int("hidden_layers", hidden_layers, HIDDEN_LAYERS_RANGE)
        self.width = _check_int("width", width, WIDTH_RANGE)
        self.dropout = _check_dropout(dropout)
        self.activation = _check_activation(activation)
        self.gated = _check_bool("gated", gated)

        self.register_buffer("feature_mean", torch.zeros(self.n_features, dtype=torch.float32))
        self.register_buffer("feature_std", torch.ones(self.n_features, dtype=torch.float32))
        # Persistence as a starting point: the logit of P(breach at t+h | breach at t) for
        # t's flag 0 and 1, added to the network's output when `offset_column` (the raw
        # input column holding t's breach flag) is >= 0. The network then learns how the
        # metrics move the odds away from "this interval's breach", and a network that
        # learnt nothing is persistence, not noise.
        self.register_buffer("offset_column", torch.tensor(-1, dtype=torch.int64))
        self.register_buffer("offset_logit", torch.zeros(2, dtype=torch.float32))

        linears: list[nn.Linear] = []
        in_dim = self.n_features
        for _ in range(self.hidden_layers):
            linears.append(nn.Linear(in_dim, self.width))
            in_dim = self.width
        self.body = HiddenLayers(linears, self.activation, self.dropout)
        self.head = nn.Linear(in_dim, 1)
        if self.gated:
            # A gated forecaster is two: the network above speaks while the tenant is
            # quiet (input `gate_column` >= 0.5: no recent breach, where early warning
            # lives), a logistic map of the inputs (`incident`) during and just after an
            # incident. Inputs outside the range training saw (`ood_watch` columns past
            # `feature_low`/`feature_high`) shrink the forecast toward `prior_logit`.
            self.incident = nn.Linear(self.n_features, 1)
            self.register_buffer("gate_column", torch.tensor(-1, dtype=torch.int64))
            self.register_buffer(
                "feature_low", torch.full((self.n_features,), -torch.inf, dtype=torch.float32)
            )
            self.register_buffer(
                "feature_high", torch.full((self.n_features,), torch.inf, dtype=torch.float32)
            )
            self.register_buffer("ood_watch", torch.zeros(self.n_features, dtype=torch.float32))
            self.register_buffer("prior_logit", torch.zeros((), dtype=torch.float32))

    def set_normalization(
        self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor
    ) -> None:
        """Store per-feature mean and std (std clamped to >= 1e-6) in the buffers."""
        expected = (self.n_features,)
        values = []
        for name, raw in (("mean", mean), ("std", std)):
            t = torch.as_tensor(
                raw.detach() if isinstance(raw, torch.Tensor) else np.asarray(raw),
                dtype=torch.float32,
            ).cpu()
            if tuple(t.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite")
            values.append(t)
        mean_t, std_t = values
        if bool((std_t < 0).any()):
            raise ValueError("std must be non-negative")
        with torch.no_grad():
            self.feature_mean.copy_(mean_t)
            self.feature_std.copy_(std_t.clamp(min=MIN_STD))

    def set_offset(self, column: int, logits: np.ndarray | torch.Tensor) -> None:
        """Add `logits[flag]` to the output, `flag` being input `column` >= 0.5 (see above)."""
        if not 0 <= column < self.n_features:
            raise ValueError(f"offset column must be in [0, {self.n_features}), got {column}")
        values = torch.as_tensor(np.asarray(logits, dtype=np.float32)).reshape(-1)
        if values.shape != (2,) or not bool(torch.isfinite(values).all()):
            raise ValueError("offset logits must be two finite numbers")
        with torch.no_grad():
            self.offset_column.fill_(column)
            self.offset_logit.copy_(values)

    def set_gate(self, column: int, low: np.ndarray, high: np.ndarray, watch: np.ndarray) -> None:
        """Gate on input `column`; shrink to the prior outside [low, high] of `watch` columns.

        Raises ``ValueError`` on a module built without ``gated`` or wrong shapes.
        """
        if not self.gated:
            raise ValueError("set_gate needs a module built with gated=True")
        if not 0 <= column < self.n_features:
            raise ValueError(f"gate column must be in [0, {self.n_features}), got {column}")
        with torch.no_grad():
            self.gate_column.fill_(column)
            for buffer, values in (
                (self.feature_low, low),
                (self.feature_high, high),
                (self.ood_watch, watch),
            ):
                tensor = torch.as_tensor(np.asarray(values, dtype=np.float32))
                if tuple(tensor.shape) != (self.n_features,):
                    raise ValueError(
                        f"expected {self.n_features} values, got {tuple(tensor.shape)}"
                    )
                buffer.copy_(tensor)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"expected input of shape (n, {self.n_features}), got {tuple(X.shape)}"
            )
        # Inputs far outside what training saw (a level shift, a new unit) are held at
        # MAX_Z standard deviations: a network extrapolates badly, and an unbounded
        # input would drive its probability to exactly 0 or 1.
        z = ((X - self.feature_mean) / self.feature_std).clamp(-MAX_Z, MAX_Z)
        out: torch.Tensor = self.head(self.body(z)).squeeze(-1)
        column = int(self.offset_column)
        if column >= 0:
            out = out + self.offset_logit[(X[:, column] >= 0.5).long()]
        if self.gated:
            out = self._gated(X, z, out)
        return out

    def _gated(self, X: torch.Tensor, z: torch.Tensor, quiet_logit: torch.Tensor) -> torch.Tensor:
        gate = int(self.gate_column)
        out = quiet_logit
        if gate >= 0:
            out = torch.where(X[:, gate] >= 0.5, quiet_logit, self.incident(z).squeeze(-1))
        weight = self.ood_score(X)
        if bool((weight > 0).any()):
            p = torch.sigmoid(out) * (1 - weight) + torch.sigmoid(self.prior_logit) * weight
            p = p.clamp(1e-7, 1 - 1e-7)
            out = torch.log(p) - torch.log1p(-p)
        return out

    def ood_score(self, X: torch.Tensor) -> torch.Tensor:
        """How far each row's watched inputs lie outside training's range, in [0, 1].

        0 for a module that is not gated (it watches nothing).
        """
        if not self.gated:
            return torch.zeros(X.shape[0])
        beyond = torch.maximum(X - self.feature_high, self.feature_low - X).clamp(min=0.0)
        excess = (beyond / self.feature_std * self.ood_watch).amax(dim=1)
        return ((excess - OOD_MARGIN) / OOD_WIDTH).clamp(0.0, 1.0)

    def architecture(self) -> dict[str, int | float | str | bool]:
        """The constructor kwargs, JSON-friendly; ``build_module`` accepts them back."""
        out: dict[str, int | float | str | bool] = {
            "n_features": self.n_features,
            "hidden_layers": self.hidden_layers,
            "width": self.width,
            "dropout": self.dropout,
            "activation": self.activation,
        }
        if self.gated:
            out["gated"] = True
        return out


def build_module(architecture: Mapping[str, object]) -> SlaMLP:
    """Build an untrained :class:`SlaMLP` from a (card's) architecture mapping.

    Every key of :meth:`SlaMLP.architecture` is required and no other key is
    accepted, so a card can never be silently filled in by changed defaults.
    Raises ``ValueError`` on any missing/unknown key, wrong type or out-of-range value.
    """
    if not isinstance(architecture, Mapping):
        raise ValueError(f"architecture must be a mapping, got {type(architecture).__name__}")
    keys = set(architecture)
    unknown = keys - ARCHITECTURE_KEYS - OPTIONAL_ARCHITECTURE_KEYS
    if unknown:
        raise ValueError(f"unknown architecture keys: {sorted(map(str, unknown))}")
    missing = ARCHITECTURE_KEYS - keys
    if missing:
        raise ValueError(f"missing architecture keys: {sorted(missing)}")
    return SlaMLP(
        n_features=_check_int("n_features", architecture["n_features"], N_FEATURES_RANGE),
        hidden_layers=_check_int(
            "hidden_layers", architecture["hidden_layers"], HIDDEN_LAYERS_RANGE
        ),
        width=_check_int("width", architecture["width"], WIDTH_RANGE),
        dropout=_check_dropout(architecture["dropout"]),
        activation=_check_activation(architecture["activation"]),
        gated=_check_bool("gated", architecture.get("gated", False)),
    )


class StackedMLP:
    """Many :class:`SlaMLP` of one architecture as stacked tensors, for one forward for all.

    A consumer batch holds a few rows for each of many tenants: one small forward per
    tenant costs far more in call overhead than in arithmetic. :meth:`scores` computes
    what each member's own ``forward`` (eval mode) computes, with batched matrix
    products (equal to float32 rounding, not bit for bit).

    Every ``state_dict`` entry of the members is one tensor of shape ``(slots, *shape)``,
    each slot in the module's own layout. ``StackedMLP(modules)`` copies the modules
    into slots ``0..n-1``; ``StackedMLP.empty(like, slots)`` allocates slots (untouched,
    so unused ones cost no resident memory) for :meth:`put` to fill. ``put(..., share=True)``
    also makes the module's own parameters and buffers views of its slot (its parameters
    then frozen: they no longer require grad), so the stack holds the only copy of its
    weights and the module forecasts from it (bit for bit as before: same values, same
    layout); :meth:`detach` gives the module copies of its own again before the slot is
    reused.

    >>> a, b = SlaMLP(3, width=4).eval(), SlaMLP(3, width=4).eval()
    >>> stack = StackedMLP.empty(a, 8)
    >>> stack.put(5, a, share=True)
    >>> stack.shares(5, a), stack.shares(5, b)
    (True, False)
    >>> stack.detach(5, a)
    >>> stack.shares(5, a)
    False
    """

    def __init__(self, modules: list[SlaMLP]) -> None:
        if not modules:
            raise ValueError("StackedMLP needs at least one module")
        self._allocate(modules[0], len(modules))
        with torch.no_grad():
            for i, module in enumerate(modules):
                self.put(i, module)

    @classmethod
    def empty(cls, like: SlaMLP, slots: int) -> StackedMLP:
        """A stack of `slots` unwritten slots for modules of `like`'s architecture."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        stack = cls.__new__(cls)
        stack._allocate(like, slots)
        return stack

    def _allocate(self, like: SlaMLP, slots: int) -> None:
        self.architecture = like.architecture()
        self.gated = like.gated
        self._activation = ACTIVATIONS[like.activation]()
        #: THE storage: one (slots, *shape) tensor per state_dict entry.
        self.tensors = {
            name: torch.empty((slots, *tensor.shape), dtype=tensor.dtype)
            for name, tensor in like.state_dict().items()
        }
        t = self.tensors
        self.mean, self.std = t["feature_mean"], t["feature_std"]
        linears = [f"body.{name}" for name, _layer in like.body.named_children()]
        # Weights (slots, out, in) and biases (slots, out), as each module holds them.
        self.layers = [(t[f"{p}.weight"], t[f"{p}.bias"]) for p in [*linears, "head"]]
        self.offset_column, self.offset_logit = t["offset_column"], t["offset_logit"]
        if self.gated:
            self.gate_column = t["gate_column"]
            self.incident = (t["incident.weight"], t["incident.bias"])
            self.low, self.high = t["feature_low"], t["feature_high"]
            self.watch, self.prior = t["ood_watch"], t["prior_logit"]

    def __len__(self) -> int:
        """Slots (written or not)."""
        return len(self.mean)

    def put(self, index: int, module: SlaMLP, *, share: bool = False) -> None:
        """Copy `module` into slot `index`; with `share`, the module then reads its slot.

        Shared, the module's buffers are views of the slot, and its parameters new
        ``Parameter`` objects on it that do not require grad: a shared slot is for
        forecasts (a batch reads the page), and a parameter that requires grad carries
        autograd state, ~1.4 KB a 2-layer module (a consumer holds one per tenant).
        """
        if module.architecture() != self.architecture:
            raise ValueError("StackedMLP members must share one architecture")
        with torch.no_grad():
            for name, tensor in module.state_dict(keep_vars=True).items():
                slot = self.tensors[name][index]
                slot.copy_(tensor.detach())
                if share and not isinstance(tensor, nn.Parameter):
                    tensor.data = slot
            if share:
                for prefix, owner in module.named_modules():
                    for leaf, _param in list(owner.named_parameters(recurse=False)):
                        slot = self.tensors[f"{prefix}.{leaf}" if prefix else leaf][index]
                        setattr(owner, leaf, nn.Parameter(slot, requires_grad=False))

    def shares(self, index: int, module: SlaMLP) -> bool:
        """Whether `module`'s tensors are views of slot `index` (`put(..., share=True)`)."""
        return bool(module.feature_mean.data_ptr() == self.mean[index].data_ptr())

    def detach(self, index: int, module: SlaMLP) -> None:
        """Give `module` its own copies of its tensors if they are views of slot `index`
        (its parameters stay as `put` left them: not requiring grad)."""
        if not self.shares(index, module):
            return
        with torch.no_grad():
            for tensor in module.state_dict(keep_vars=True).values():
                tensor.data = tensor.data.clone()

    def scores(
        self, members: torch.Tensor, X: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (t, r) of members `members` (t,) on their padded inputs `X` (t, r, f),
        and for gated members each row's `SlaMLP.ood_score` (t, r), which the gate
        computes anyway (None when not gated).

        `rows` (t,) is each member's count of real rows; the rest are padding, whose
        logits are meaningless (they only must not decide a member's OOD shrinkage).
        Members that are consecutive slots, in order, are read in place (no copy).
        """
        pick: torch.Tensor | slice = members
        first = int(members[0]) if len(members) else 0
        if bool((members == torch.arange(first, first + len(members))).all()):
            pick = slice(first, first + len(members))
        mean, std = self.mean[pick].unsqueeze(1), self.std[pick].unsqueeze(1)
        z = ((X - mean) / std).clamp(-MAX_Z, MAX_Z)
        h = z
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            h = torch.baddbmm(bias[pick].unsqueeze(1), h, weight[pick].transpose(1, 2))
            if i < last:
                h = self._activation(h)
        out = h.squeeze(-1)
        column = self.offset_column[pick]
        flag = _column(X, column) >= 0.5
        shifted = out + torch.gather(self.offset_logit[pick], 1, flag.long())
        out = torch.where((column >= 0).unsqueeze(1), shifted, out)
        if not self.gated:
            return out, None
        gate = self.gate_column[pick]
        weight, bias = self.incident
        incident = torch.baddbmm(bias[pick].unsqueeze(1), z, weight[pick].transpose(1, 2))
        incident = incident.squeeze(-1)
        keep = (gate < 0).unsqueeze(1) | (_column(X, gate) >= 0.5)
        out = torch.where(keep, out, incident)
        low, high = self.low[pick].unsqueeze(1), self.high[pick].unsqueeze(1)
        beyond = torch.maximum(X - high, low - X).clamp(min=0.0)
        excess = (beyond / std * self.watch[pick].unsqueeze(1)).amax(dim=2)
        share = ((excess - OOD_MARGIN) / OOD_WIDTH).clamp(0.0, 1.0)
        real = torch.arange(X.shape[1]).unsqueeze(0) < rows.unsqueeze(1)
        shrunk = ((share > 0) & real).any(dim=1)
        if bool(shrunk.any()):
            prior = torch.sigmoid(self.prior[pick]).unsqueeze(1)
            p = (torch.sigmoid(out) * (1 - share) + prior * share).clamp(1e-7, 1 - 1e-7)
            out = torch.where(shrunk.unsqueeze(1), torch.log(p) - torch.log1p(-p), out)
        return out, share


def _column(X: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """Each member's input column `column[t]` (clipped to 0 where it is -1): (t, r)."""
    index = column.clamp(min=0).view(-1, 1, 1).expand(-1, X.shape[1], 1)
    return torch.gather(X, 2, index).squeeze(-1)
