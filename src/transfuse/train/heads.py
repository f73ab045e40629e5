"""Fast classification heads on cached features: a full-batch torch fit, scikit-learn style.

The training objective of every head here (and of :mod:`transfuse.fuse.features`) is

    L = sum_i s_i * w_{y_i} * CE(q_i, softmax(f(x_i))) / sum_i s_i  +  weight_decay / 2 * ||W||^2

with ``s`` the sample weights, ``w`` the class weights (``"balanced"``: ``n / (C * n_c)``, as in
scikit-learn), ``q_i = (1 - eps) * onehot(y_i) + eps / C`` the label-smoothed target and ``W`` all
weight matrices (biases are not penalised). With ``eps = 0`` and no weights, a linear head minimises
the same function as ``LogisticRegression(C=1 / (weight_decay * n))``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ValidationError
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transfuse.config import ClassWeight, HeadConfig, HeadKind, Optimizer, field_defaults
from transfuse.errors import UserError

_HEAD = field_defaults(HeadConfig)


def validate_config(model: type[BaseModel], params: dict, owner: str) -> BaseModel:
    """Build ``model(**params)``, turning a pydantic error into a one-line :class:`UserError`."""
    try:
        return model(**params)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        raise UserError(
            f"{owner}: parameter {key!r} is invalid ({err['msg']}); got {err.get('input')!r}"
        ) from None


# ----------------------------------------------------------------------------- shared helpers


def standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and scales; a (near-)constant column keeps scale 1, as in scikit-learn's
    StandardScaler, so folding the scale into a linear layer never blows its weights up."""
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    return mean, np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std, 1.0)


def check_features(X, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as a finite 2-D float array or raise a :class:`UserError` naming ``name``."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (n_samples, n_features); got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise UserError(f"{name} must be numeric; got dtype {X.dtype}")
    if not np.isfinite(X).all():
        raise UserError(f"{name} contains NaN or infinite values; drop or impute them first")
    if n_features is not None and X.shape[1] != n_features:
        raise UserError(
            f"{name} has {X.shape[1]} features but the model was fitted with {n_features}"
        )
    return X.astype(np.float64, copy=False)


def encode_labels(y, n: int, n_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes, y_index)``. With ``n_classes`` the labels must be ints in
    ``[0, n_classes)`` and ``classes`` is ``arange(n_classes)``: a fold missing a class keeps the
    full width."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"y must be 1-D with one label per sample ({n}); got shape {y.shape}")
    if n_classes is None:
        classes, idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise UserError(
                "y holds a single class; pass n_classes=... to fit a head on a one-class fold"
            )
        return classes, idx
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= n_classes)):
        raise UserError(
            f"with n_classes={n_classes} the labels must be integers in [0, {n_classes}); "
            f"got values {np.unique(y)[:10].tolist()}"
        )
    return np.arange(n_classes), y.astype(np.int64)


def class_weights(y_idx: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class weights: ones, or ``n / (C_present * n_c)`` for ``"balanced"`` (absent: 0)."""
    if mode == "none":
        return np.ones(n_classes)
    counts = np.bincount(y_idx, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(y_idx) / (present.sum() * counts[present])
    return w


def smoothed_ce(
    logits: torch.Tensor,
    y: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted, label-smoothed cross-entropy (the data term of the module docstring's ``L``)."""
    n, c = logits.shape
    logp = torch.log_softmax(logits, dim=1)
    q = torch.full_like(logp, label_smoothing / c)
    q[torch.arange(n), y] += 1.0 - label_smoothing
    ce = -(q * logp).sum(dim=1)
    s = torch.ones_like(ce) if sample_weight is None else sample_weight
    w = s if class_weight is None else s * class_weight[y]
    return (w * ce).sum() / s.sum()


def l2_penalty(module: torch.nn.Module) -> torch.Tensor:
    """Sum of squares of every weight matrix (parameters with >= 2 dims) of ``module``."""
    terms = [(p**2).sum() for p in module.parameters() if p.ndim >= 2]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def fit_full_batch(
    module: torch.nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    *,
    optimizer: Literal["lbfgs", "adam"],
    max_iter: int,
    lr: float,
    tol: float = 1e-7,
) -> float:
    """Minimise ``loss_fn()`` over ``module``'s parameters, full batch; return the final loss.

    L-BFGS stops after ``max_iter`` iterations, when the largest gradient entry is below ``tol``
    or when a step changes the loss by less than ``tol / 100``; Adam runs ``max_iter`` steps."""
    params = [p for p in module.parameters() if p.requires_grad]
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            tolerance_grad=tol,
            tolerance_change=tol * 1e-2,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        module.train()
        opt.step(closure)
    else:
        opt = torch.optim.Adam(params, lr=lr)
        module.train()
        for _ in range(max_iter):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
    module.eval()
    with torch.no_grad():
        return float(loss_fn())


@contextmanager
def cpu_threads(n_values: int):
    """Use one torch CPU thread for small problems (``n_values`` = rows x features below 4e6):
    on a busy machine extra intra-op threads make a small full-batch fit many times slower."""
    before = torch.get_num_threads()
    if n_values < 4_000_000:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_optimizer(optimizer: str, dropout: float, linear: bool) -> Literal["lbfgs", "adam"]:
    """``auto``: L-BFGS for smooth deterministic problems (linear, no dropout), Adam otherwise."""
    if optimizer != "auto":
        return optimizer  # type: ignore[return-value]
    return "lbfgs" if linear and dropout == 0.0 else "adam"


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, hidden),
        torch.nn.GELU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(hidden, d_out),
    )


# ----------------------------------------------------------------------------- the head


class HeadClassifier(ClassifierMixin, BaseEstimator):
    """A linear or one-hidden-layer MLP head fitted full-batch on (cached) features.

    Parameters are those of :class:`HeadConfig` (defaults included) plus ``n_classes`` (labels
    are then ints in ``[0, n_classes)`` and ``predict_proba`` always has ``n_classes`` columns,
    even for a fold missing a class) and ``device``. Linear heads start from zero weights and are
    fitted by L-BFGS, so they are deterministic; MLP heads use Adam, seeded by ``seed``.
    """

    def __init__(
        self,
        kind: HeadKind = _HEAD["kind"],
        hidden: int = _HEAD["hidden"],
        dropout: float = _HEAD["dropout"],
        weight_decay: float = _HEAD["weight_decay"],
        label_smoothing: float = _HEAD["label_smoothing"],
        class_weight: ClassWeight = _HEAD["class_weight"],
        max_iter: int = _HEAD["max_iter"],
        lr: float = _HEAD["lr"],
        optimizer: Optimizer = _HEAD["optimizer"],
        tol: float = _HEAD["tol"],
        standardize: bool = _HEAD["standardize"],
        seed: int = _HEAD["seed"],
        n_classes: int | None = None,
        device: str = "cpu",
    ):
        self.kind = kind
        self.hidden = hidden
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.lr = lr
        self.optimizer = optimizer
        self.tol = tol
        self.standardize = standardize
        self.seed = seed
        self.n_classes = n_classes
        self.device = device

    @classmethod
    def from_config(cls, config: HeadConfig, **kwargs) -> HeadClassifier:
        """Build a head from a :class:`HeadConfig` (plus ``n_classes``/``device``)."""
        return cls(**config.model_dump(), **kwargs)

    @property
    def config(self) -> HeadConfig:
        params = {k: v for k, v in self.get_params().items() if k in HeadConfig.model_fields}
        return validate_config(HeadConfig, params, type(self).__name__)  # type: ignore[return-value]

    def _dtype(self) -> torch.dtype:
        # float64 keeps the convex L-BFGS fit exact on CPU; MLPs and GPUs use float32 for speed.
        return torch.float64 if self.device == "cpu" and self.kind == "linear" else torch.float32

    def fit(self, X, y, sample_weight=None) -> HeadClassifier:
        cfg = self.config
        X = check_features(X)
        self.classes_, y_idx = encode_labels(y, len(X), self.n_classes)
        c = len(self.classes_)
        self.n_features_in_ = X.shape[1]
        if self.standardize:
            self.mean_, self.scale_ = standardizer(X)
        else:
            self.mean_, self.scale_ = np.zeros(X.shape[1]), np.ones(X.shape[1])
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if (
                sample_weight.shape != (len(X),)
                or (sample_weight < 0).any()
                or sample_weight.sum() <= 0
            ):
                raise UserError(
                    "sample_weight must be non-negative, one per sample, with a positive sum"
                )
        dev, dt = torch.device(self.device), self._dtype()
        Xt = torch.as_tensor((X - self.mean_) / self.scale_, dtype=dt, device=dev)
        yt = torch.as_tensor(y_idx, device=dev)
        cw = torch.as_tensor(class_weights(y_idx, c, cfg.class_weight), dtype=dt, device=dev)
        sw = None if sample_weight is None else torch.as_tensor(sample_weight, dtype=dt, device=dev)
        with torch.random.fork_rng(devices=[]), cpu_threads(X.size):
            torch.manual_seed(cfg.seed)
            if cfg.kind == "linear":
                net = torch.nn.Linear(X.shape[1], c)
                torch.nn.init.zeros_(net.weight)
                torch.nn.init.zeros_(net.bias)
            else:
                net = mlp(X.shape[1], cfg.hidden, c, cfg.dropout)
            net = net.to(device=dev, dtype=dt)

            def loss_fn() -> torch.Tensor:
                data = smoothed_ce(
                    net(Xt),
                    yt,
                    label_smoothing=cfg.label_smoothing,
                    class_weight=cw,
                    sample_weight=sw,
                )
                return data + 0.5 * cfg.weight_decay * l2_penalty(net)

            opt = resolve_optimizer(cfg.optimizer, cfg.dropout, cfg.kind == "linear")
            self.loss_ = fit_full_batch(
                net, loss_fn, optimizer=opt, max_iter=cfg.max_iter, lr=cfg.lr, tol=cfg.tol
            )
        self.net_ = net.cpu().eval()
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "net_")
        X = check_features(X, n_features=self.n_features_in_)
        Xt = torch.as_tensor((X - self.mean_) / self.scale_, dtype=self._dtype())
        with torch.no_grad(), cpu_threads(X.size):
            return self.net_.to(self._dtype())(Xt).double().numpy()

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def to_linear(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` with ``logits = X_raw @ W.T + b`` (standardisation folded in), shapes
        ``(C, d)`` and ``(C,)`` like ``torch.nn.Linear``: initialise a fine-tuning head from a
        probe (LP-FT)."""
        check_is_fitted(self, "net_")
        if self.kind != "linear":
            raise UserError("to_linear() needs a linear head; this head has kind='mlp'")
        W = self.net_.weight.detach().double().numpy() / self.scale_
        b = self.net_.bias.detach().double().numpy() - W @ self.mean_
        return W, b


# ----------------------------------------------------------------------------- many fits, one split


def lbfgs(fun_grad: Callable[[np.ndarray], tuple[float, np.ndarray]], x: np.ndarray, max_iter: int,
          gtol: float, memory: int = 10, ftol: float = 1e-10) -> tuple[np.ndarray, int]:
    """Minimise a smooth function with L-BFGS (two-loop recursion, Armijo backtracking); return
    ``(x, evaluations)``. Stops after ``max_iter`` iterations, when the largest gradient entry is
    at most ``gtol``, when a step lowers ``f`` by at most ``ftol`` relatively, or when no step
    lowers it at all (the precision of ``f`` is reached). On the searched heads it needs as many
    evaluations as scipy's L-BFGS-B and about 25% less time per evaluation."""
    f, g = fun_grad(x)
    evals, S, Y, rho = 1, [], [], []
    for _ in range(max_iter):
        if np.abs(g).max() <= gtol:
            break
        p, alphas = g.copy(), []
        for s, y, r in zip(reversed(S), reversed(Y), reversed(rho)):
            alphas.append(r * (s @ p))
            p -= alphas[-1] * y
        p *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else 1.0 / max(1.0, np.abs(g).sum())
        for s, y, r, a in zip(S, Y, rho, reversed(alphas)):
            p += (a - r * (y @ p)) * s
        slope = -(g @ p)
        if slope >= 0:  # not a descent direction: restart from the scaled gradient
            S, Y, rho = [], [], []
            p = g / max(1.0, np.abs(g).sum())
            slope = -(g @ p)
        t = 1.0
        for _ in range(30):
            x_new = x - t * p
            f_new, g_new = fun_grad(x_new)
            evals += 1
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= min(0.5, max(0.1, -slope * t / (2.0 * (f_new - f - slope * t))))  # quadratic fit
        else:
            break
        s, y = x_new - x, g_new - g
        if s @ y > 1e-10 * (y @ y):
            S.append(s), Y.append(y), rho.append(1.0 / (s @ y))
            if len(S) > memory:
                S.pop(0), Y.pop(0), rho.pop(0)
        small = f - f_new <= ftol * max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if small:
            break
    return x, evals


class LinearHeadProblem:
    """One train/validation split of cached features, prepared once for many linear-head fits
    (a hyperparameter search over ``weight_decay``, ``label_smoothing``, ``class_weight``).

    Each fit minimises the objective of a linear :class:`HeadClassifier` (module docstring, no
    sample weights) and returns the validation probabilities, only cheaper: the features are
    standardised once; with fewer training rows than features they are written in an orthonormal
    basis of the rows' span, ``X = R^T Q^T`` (exact: the penalised optimum lies in that span and
    the basis keeps ``||W||``), so products use the triangular ``R^T``; products run in ``dtype``
    (float32 by default) on one BLAS thread; :func:`lbfgs` gets analytic gradients (loss summed
    in float64), stops at gradient tolerance ``tol`` or ``max_iter`` iterations and starts from
    the nearest earlier solution of this split (in log weight decay, label smoothing and class
    weight). On standardised features float32 rounding moves the probabilities by about 1e-4
    and the default tolerance (scikit-learn's 1e-4) by up to a few 1e-3 (tests/test_heads.py).
    """

    def __init__(self, X_train, y_train, X_val, n_classes: int, *, standardize: bool = True,
                 dtype: type = np.float32, tol: float = 1e-4):
        X = check_features(X_train, "X_train")
        Xv = check_features(X_val, "X_val", n_features=X.shape[1])
        _, self.y = encode_labels(y_train, len(X), n_classes)
        self.n_classes, self.tol, self.dtype = n_classes, tol, dtype
        if standardize:
            mean, scale = standardizer(X)
            X, Xv = (X - mean) / scale, (Xv - mean) / scale
        self.triangular = len(X) < X.shape[1]
        if self.triangular:  # X = R^T Q^T: the n x n lower-triangular R^T replaces the d features
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                basis, r = np.linalg.qr(X.T)
                X, Xv = r.T, Xv @ basis
        self.Z = (np.asfortranarray if self.triangular else np.ascontiguousarray)(X, dtype=dtype)
        self.Z_val = np.ascontiguousarray(Xv, dtype=np.float64)
        self.onehot = np.eye(n_classes, dtype=dtype)[self.y]
        self.n_evals = 0
        self._solutions: list[tuple[np.ndarray, np.ndarray]] = []

    def _times_z(self, W: np.ndarray) -> np.ndarray:
        """``Z @ W.T``; a triangular BLAS product (half the work) when ``Z`` is ``R^T``."""
        if self.triangular:
            from scipy.linalg.blas import dtrmm, strmm

            return (strmm if self.dtype == np.float32 else dtrmm)(1.0, self.Z, W.T, lower=1)
        return self.Z @ W.T

    def _z_times(self, G: np.ndarray) -> np.ndarray:
        """``G.T @ Z``, computed as ``(Z.T @ G).T`` by the triangular product when it applies."""
        if self.triangular:
            from scipy.linalg.blas import dtrmm, strmm

            return (strmm if self.dtype == np.float32 else dtrmm)(1.0, self.Z, G, lower=1, trans_a=1).T
        return G.T @ self.Z

    def _loss_grad(self, theta: np.ndarray, lam: float, q: np.ndarray, w: np.ndarray):
        n, d = self.Z.shape
        P = theta.reshape(self.n_classes, d + 1)
        Pf = P.astype(self.dtype)
        logits = self._times_z(Pf[:, :d]) + Pf[:, d]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        total = e.sum(axis=1, keepdims=True)
        logp = logits - np.log(total)
        data = -np.einsum("ic,ic,i->", q, logp, w, dtype=np.float64) / n
        G = (e / total - q) * (w / n)[:, None]
        grad = np.empty_like(P)
        grad[:, :d] = self._z_times(G) + lam * P[:, :d]
        grad[:, d] = G.sum(axis=0)
        return data + 0.5 * lam * float(np.vdot(P[:, :d], P[:, :d])), grad.ravel()

    def fit_proba(self, weight_decay: float, label_smoothing: float = 0.0,
                  class_weight: str = "none", max_iter: int = 200) -> np.ndarray:
        """Validation probabilities ``(n_val, n_classes)`` of the head fitted on the training part."""
        from threadpoolctl import threadpool_limits

        c, d = self.n_classes, self.Z.shape[1]
        q = (self.onehot * (1.0 - label_smoothing) + label_smoothing / c).astype(self.dtype)
        w = class_weights(self.y, c, class_weight)[self.y].astype(self.dtype)
        key = np.array([np.log10(max(weight_decay, 1e-12)), 10.0 * label_smoothing,
                        float(class_weight == "balanced")])
        theta = np.zeros(c * (d + 1))
        if self._solutions:  # warm start: the nearest earlier fit, if within a few decades of lambda
            dist = [float(np.abs(k - key).sum()) for k, _ in self._solutions]
            i = int(np.argmin(dist))
            if dist[i] < 3.0:
                theta = self._solutions[i][1]
        with threadpool_limits(1):
            x, n_evals = lbfgs(lambda t: self._loss_grad(t, weight_decay, q, w), theta, max_iter, self.tol,
                               ftol=1e-10 if self.dtype == np.float32 else 64 * np.finfo(float).eps)
        self.n_evals += n_evals
        self._solutions.append((key, x))
        P = x.reshape(c, d + 1)
        z = self.Z_val @ P[:, :d].T + P[:, d]
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)
