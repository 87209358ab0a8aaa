"""Known-answer tests for the math worked through in the seed report, and for the project's
own loss and optimizers.

Each test implements a hand-derived formula with plain torch or numpy ops (float64) and compares
it with what the code computes, so a wrong formula (or wrong code) fails the test:

1. batch-norm backward (per-feature, and per-channel over N*H*W for BatchNorm2d);
2. the training loss, ``fer_ray.train.loop.mixed_cross_entropy`` (class ids or vote rows,
   label smoothing, mixup/CutMix weights): its value and its gradient softmax(z) - target;
3. Adam with beta1 = 0, beta2 -> 1 and lr = eta0 / sqrt(t) reduces to AdaGrad, and Adam's
   moment buffers equal the closed-form exponentially weighted sums;
4. every optimizer ``fer_ray.train.optim.build_optimizer`` builds from a config: three steps
   with fixed gradients against the update rule written out by hand.

Sections 1 and 3 check PyTorch, not fer-ray: they are the seed report's derivations (the
network's BatchNorm2d layers, the Adam recipe of ``seed_hw3``) kept as executable checks of
the math the project's recipes rely on, and they cost milliseconds. Sections 2 and 4 check
fer-ray's own code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer_ray.config import OptimConfig
from fer_ray.train.loop import mixed_cross_entropy
from fer_ray.train.optim import build_optimizer

DTYPE = torch.float64


# ---------------------------------------------------------------------------
# 1. Batch-norm backward
# ---------------------------------------------------------------------------


def _bn_forward_backward_manual(
    x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, dy: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch norm over dim 0 of an (m, features) tensor, backward by the report's formulas.

    Returns (y, dL/dx, dL/dgamma, dL/dbeta). Only elementwise ops and sums are used, no autograd.
    """
    m = x.shape[0]
    mu = x.sum(0) / m
    xc = x - mu
    var = (xc * xc).sum(0) / m  # biased batch variance, as in training-mode batch norm
    inv_std = 1.0 / torch.sqrt(var + eps)
    x_hat = xc * inv_std
    y = gamma * x_hat + beta

    dx_hat = dy * gamma
    dvar = (dx_hat * xc * (-0.5) * (var + eps) ** (-1.5)).sum(0)
    # The second term is mathematically zero (sum of deviations from the mean), so no test can
    # observe its coefficient; it is kept so the code mirrors the report's formula term by term.
    dmu = (dx_hat * (-inv_std)).sum(0) + dvar * (-2.0 * xc / m).sum(0)
    dx = dx_hat * inv_std + dvar * 2.0 * xc / m + dmu / m
    dgamma = (dy * x_hat).sum(0)
    dbeta = dy.sum(0)
    return y, dx, dgamma, dbeta


def _bn_inputs(
    gen: torch.Generator, m: int, features: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random x (non-zero mean, non-unit scale), gamma, beta and an upstream gradient dy."""
    x = 3.0 * torch.randn(m, features, generator=gen, dtype=DTYPE) + 1.5
    gamma = torch.randn(features, generator=gen, dtype=DTYPE)
    beta = torch.randn(features, generator=gen, dtype=DTYPE)
    dy = torch.randn(m, features, generator=gen, dtype=DTYPE)
    return x, gamma, beta, dy


# A small batch makes eps non-negligible relative to var, so an eps mistake would show up too.
@pytest.mark.parametrize(("m", "features", "eps"), [(8, 5, 1e-5), (3, 4, 0.5), (64, 3, 1e-3)])
def test_batchnorm_backward_matches_functional_autograd(m: int, features: int, eps: float) -> None:
    """Hand-written BN backward equals autograd through F.batch_norm(training=True)."""
    gen = torch.Generator().manual_seed(1000 + m)
    x, gamma, beta, dy = _bn_inputs(gen, m, features)
    y_manual, dx_manual, dgamma_manual, dbeta_manual = _bn_forward_backward_manual(
        x, gamma, beta, dy, eps
    )

    xa = x.clone().requires_grad_(True)
    ga = gamma.clone().requires_grad_(True)
    ba = beta.clone().requires_grad_(True)
    y = F.batch_norm(xa, None, None, weight=ga, bias=ba, training=True, eps=eps)
    # Backpropagating dy through y is the same as differentiating L = sum(dy * y).
    y.backward(dy)

    assert xa.grad is not None and ga.grad is not None and ba.grad is not None
    torch.testing.assert_close(y_manual, y.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx_manual, xa.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dgamma_manual, ga.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dbeta_manual, ba.grad, rtol=1e-10, atol=1e-12)


def test_batchnorm_backward_matches_batchnorm1d_module() -> None:
    """Hand-written BN backward equals autograd through nn.BatchNorm1d in train mode."""
    gen = torch.Generator().manual_seed(11)
    m, features, eps = 16, 6, 1e-5
    x, gamma, beta, dy = _bn_inputs(gen, m, features)
    _, dx_manual, dgamma_manual, dbeta_manual = _bn_forward_backward_manual(
        x, gamma, beta, dy, eps
    )

    bn = torch.nn.BatchNorm1d(features, eps=eps).to(DTYPE).train()
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    xa = x.clone().requires_grad_(True)
    bn(xa).backward(dy)

    assert xa.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None
    torch.testing.assert_close(dx_manual, xa.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dgamma_manual, bn.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dbeta_manual, bn.bias.grad, rtol=1e-10, atol=1e-12)


def test_batchnorm2d_backward_uses_n_h_w_as_batch() -> None:
    """For BatchNorm2d the 'batch' of each channel is all N*H*W positions: the 1-D formulas,
    applied to the (N*H*W, C) reshaping, give BatchNorm2d's autograd gradients."""
    gen = torch.Generator().manual_seed(22)
    n, c, h, w, eps = 4, 3, 5, 2, 1e-5
    x = 2.0 * torch.randn(n, c, h, w, generator=gen, dtype=DTYPE) - 0.7
    gamma = torch.randn(c, generator=gen, dtype=DTYPE)
    beta = torch.randn(c, generator=gen, dtype=DTYPE)
    dy = torch.randn(n, c, h, w, generator=gen, dtype=DTYPE)

    def to_rows(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 2, 3, 1).reshape(-1, c)  # (N*H*W, C)

    def from_rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, h, w, c).permute(0, 3, 1, 2)

    _, dx_rows, dgamma_manual, dbeta_manual = _bn_forward_backward_manual(
        to_rows(x), gamma, beta, to_rows(dy), eps
    )
    dx_manual = from_rows(dx_rows)

    bn = torch.nn.BatchNorm2d(c, eps=eps).to(DTYPE).train()
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    xa = x.clone().requires_grad_(True)
    bn(xa).backward(dy)

    assert xa.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None
    torch.testing.assert_close(dx_manual, xa.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dgamma_manual, bn.weight.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dbeta_manual, bn.bias.grad, rtol=1e-10, atol=1e-12)

    # Guard against a vacuous pass: normalising per (N) sample batch only, i.e. treating each
    # spatial position as its own feature, gives a different gradient.
    x_flat = x.reshape(n, -1)
    gamma_flat = gamma.repeat_interleave(h * w)
    beta_flat = beta.repeat_interleave(h * w)
    _, dx_wrong, _, _ = _bn_forward_backward_manual(
        x_flat, gamma_flat, beta_flat, dy.reshape(n, -1), eps
    )
    assert (dx_wrong.reshape(n, c, h, w) - xa.grad).abs().max() > 1e-3


# ---------------------------------------------------------------------------
# 2. Softmax + cross-entropy gradient
# ---------------------------------------------------------------------------


def _loss_and_grad(z: torch.Tensor, target: torch.Tensor, partner: torch.Tensor, lam: float,
                   smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The project's training loss and dL/dz by autograd."""
    za = z.clone().requires_grad_(True)
    loss = mixed_cross_entropy(za, target, partner, lam, smoothing)
    loss.backward()
    assert za.grad is not None
    return loss.detach(), za.grad


def _smoothed(rows: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing of target rows: (1 - eps) * rows + eps / K."""
    return (1.0 - smoothing) * rows + smoothing / rows.shape[1]


@pytest.mark.parametrize(("lam", "smoothing"), [(1.0, 0.0), (1.0, 0.1), (0.7, 0.0), (0.35, 0.3)])
@pytest.mark.parametrize("kind", ["class ids", "vote rows"])
def test_training_loss_gradient_is_prob_minus_mixed_smoothed_target(
        lam: float, smoothing: float, kind: str) -> None:
    """mixed_cross_entropy = mean over the batch of -sum_k t_k log softmax(z)_k with
    t = lam * T(target) + (1 - lam) * T(partner), T the label smoothing, for class ids
    (T of one-hot rows) and vote rows alike; so dL/dz = (softmax(z) - t) / N."""
    gen = torch.Generator().manual_seed(33)
    n, k = 10, 7  # 7 classes, as in FER-2013
    z = 2.0 * torch.randn(n, k, generator=gen, dtype=DTYPE)
    labels = torch.randint(0, k, (n,), generator=gen)
    partner_labels = torch.randint(0, k, (n,), generator=gen)
    if kind == "class ids":
        target, partner = labels, partner_labels
        rows, partner_rows = F.one_hot(labels, k).to(DTYPE), F.one_hot(partner_labels, k).to(DTYPE)
    else:  # FER+ vote shares
        rows = torch.softmax(torch.randn(n, k, generator=gen, dtype=DTYPE), dim=1)
        partner_rows = torch.softmax(torch.randn(n, k, generator=gen, dtype=DTYPE), dim=1)
        target, partner = rows, partner_rows
    mixed = lam * _smoothed(rows, smoothing) + (1.0 - lam) * _smoothed(partner_rows, smoothing)

    y_hat = torch.exp(z - z.max(1, keepdim=True).values)
    y_hat = y_hat / y_hat.sum(1, keepdim=True)
    loss, grad = _loss_and_grad(z, target, partner, lam, smoothing)
    torch.testing.assert_close(loss, -(mixed * torch.log(y_hat)).sum(1).mean(),
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, (y_hat - mixed) / n, rtol=1e-10, atol=1e-14)
    # The mixed target still sums to one, so each row of the gradient sums to zero.
    torch.testing.assert_close(grad.sum(1), torch.zeros(n, dtype=DTYPE), rtol=0.0, atol=1e-15)


# ---------------------------------------------------------------------------
# 3. Adam -> AdaGrad, and Adam's moment buffers
# ---------------------------------------------------------------------------


def _least_squares_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small over-determined least-squares problem L(w) = 0.5 * ||A w - b||^2 and a start w0.

    Its gradient A^T (A w - b) changes every step, so the optimizers see non-trivial sequences.
    """
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(12, 5, generator=gen, dtype=DTYPE)
    b = torch.randn(12, generator=gen, dtype=DTYPE)
    w0 = torch.randn(5, generator=gen, dtype=DTYPE)
    return a, b, w0


def _loss(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r = a @ w - b
    return 0.5 * (r * r).sum()


def _run_adam(
    a: torch.Tensor,
    b: torch.Tensor,
    w0: torch.Tensor,
    steps: int,
    eta0: float,
    betas: tuple[float, float],
    lr_decay_sqrt: bool,
) -> torch.Tensor:
    """Adam trajectory; before step t (1-based) lr is eta0 / sqrt(t) if lr_decay_sqrt."""
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=eta0, betas=betas, eps=1e-12)
    for t in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = eta0 / math.sqrt(t) if lr_decay_sqrt else eta0
        opt.zero_grad()
        _loss(w, a, b).backward()
        opt.step()
    return w.detach()


def _run_adagrad(
    a: torch.Tensor, b: torch.Tensor, w0: torch.Tensor, steps: int, eta0: float
) -> torch.Tensor:
    """AdaGrad trajectory: w_t = w_{t-1} - eta0 * g_t / sqrt(sum_{i<=t} g_i^2)."""
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adagrad([w], lr=eta0, lr_decay=0.0, initial_accumulator_value=0.0, eps=1e-12)
    for _ in range(steps):
        opt.zero_grad()
        _loss(w, a, b).backward()
        opt.step()
    return w.detach()


# Tolerance for Adam(beta1=0, beta2=1-delta, lr=eta0/sqrt(t)) vs AdaGrad(eta0), delta = 1e-9:
# * truncation: bias-corrected v_hat = delta * sum_i beta2^(t-i) g_i^2 / (1 - beta2^t) differs
#   from (1/t) sum_i g_i^2 by a relative O(t * delta) ~ 1e-8 (weights 1 - (t-i) delta, and
#   delta / (1 - beta2^t) = (1/t)(1 + (t-1) delta / 2 + ...)); the step uses sqrt, so ~5e-9;
# * rounding: 1 - beta2**t ~ t * delta ~ 1e-8 is a cancellation of numbers near 1, so it carries
#   a relative error ~ 1e-16 / 1e-8 = 1e-8 (1 - beta2 itself is exact by Sterbenz's lemma);
# * eps = 1e-12 against sqrt(sum g^2) = O(1) contributes ~1e-12.
# An AdaGrad step moves each coordinate by at most eta0 = 0.1 (|g_t| <= sqrt(sum g^2)), so a
# relative step error of ~1e-8 adds at most ~1e-9 per step and ~2e-8 over 20 steps (the convex
# quadratic with small steps does not amplify it); the observed gap is ~4e-10. atol = 1e-7
# keeps margin above that bound, while any real mismatch (lr ~ 1/t, beta2 = 1 - 1e-3 or 0.9,
# constant lr, beta1 = 0.9) moves w by >= 1e-3.
ADAGRAD_ATOL = 1e-7


def test_adam_with_beta1_0_beta2_to_1_and_sqrt_decay_is_adagrad() -> None:
    """Adam(beta1=0, beta2=1-1e-9, lr=eta0/sqrt(t)) follows AdaGrad(lr=eta0) step for step."""
    a, b, w0 = _least_squares_problem(seed=55)
    eta0, steps = 0.1, 20
    w_adam = _run_adam(a, b, w0, steps, eta0, betas=(0.0, 1.0 - 1e-9), lr_decay_sqrt=True)
    w_adagrad = _run_adagrad(a, b, w0, steps, eta0)

    # The parameters actually moved (so agreement is not just w0 == w0).
    assert (w_adagrad - w0).abs().max() > 0.1
    torch.testing.assert_close(w_adam, w_adagrad, rtol=0.0, atol=ADAGRAD_ATOL)


@pytest.mark.parametrize(
    ("betas", "lr_decay_sqrt"),
    [((0.0, 0.9), True), ((0.0, 1.0 - 1e-9), False), ((0.9, 1.0 - 1e-9), True)],
    ids=["beta2=0.9", "constant-lr", "beta1=0.9"],
)
def test_adam_adagrad_equivalence_needs_all_conditions(
    betas: tuple[float, float], lr_decay_sqrt: bool
) -> None:
    """Dropping any one condition (beta2 -> 1, lr ~ 1/sqrt(t), beta1 = 0) makes the trajectories
    differ clearly, so the equivalence test above is not vacuous."""
    a, b, w0 = _least_squares_problem(seed=55)
    eta0, steps = 0.1, 20
    w_adam = _run_adam(a, b, w0, steps, eta0, betas=betas, lr_decay_sqrt=lr_decay_sqrt)
    w_adagrad = _run_adagrad(a, b, w0, steps, eta0)
    assert (w_adam - w_adagrad).abs().max() > 1e-3


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.8), (0.0, 0.95)])
def test_adam_moments_equal_closed_form_sums(betas: tuple[float, float]) -> None:
    """After t steps Adam's exp_avg = (1-b1) sum_i b1^(t-i) g_i and
    exp_avg_sq = (1-b2) sum_i b2^(t-i) g_i^2 (un-bias-corrected, zero-initialised)."""
    beta1, beta2 = betas
    a, b, w0 = _least_squares_problem(seed=66)
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.05, betas=betas, eps=1e-8)
    grads: list[torch.Tensor] = []
    steps = 12
    for _ in range(steps):
        opt.zero_grad()
        _loss(w, a, b).backward()
        assert w.grad is not None
        grads.append(w.grad.detach().clone())
        opt.step()

    t = steps
    m_closed = (1 - beta1) * sum(
        (beta1 ** (t - i) * g for i, g in enumerate(grads, start=1)), torch.zeros_like(w0)
    )
    v_closed = (1 - beta2) * sum(
        (beta2 ** (t - i) * g * g for i, g in enumerate(grads, start=1)), torch.zeros_like(w0)
    )
    state = opt.state[w]
    torch.testing.assert_close(state["exp_avg"], m_closed, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(state["exp_avg_sq"], v_closed, rtol=1e-12, atol=1e-14)
    # The gradients really changed between steps, so the weighting by step index is tested.
    assert (grads[0] - grads[-1]).abs().max() > 1e-2


# ---------------------------------------------------------------------------
# 4. The optimizers a config names
# ---------------------------------------------------------------------------

W0 = np.array([1.0, -2.0, 0.5, 3.0])
GRADS = [np.array([0.5, -1.0, 2.0, 0.0]), np.array([-0.3, 0.4, 1.5, 0.2]),
         np.array([0.1, -0.2, -0.7, 0.9])]
# Every optimizer's own constants, torch's defaults: fer-ray's configs do not set them.
BETA1, BETA2, ADAM_EPS, ALPHA, ADAGRAD_EPS, MOMENTUM_DECAY = 0.9, 0.999, 1e-8, 0.99, 1e-10, 4e-3


def _by_hand(c: OptimConfig) -> np.ndarray:
    """The weights after GRADS, by each optimizer's update rule written out (numpy, float64)."""
    w, lr, wd = W0.copy(), c.lr, c.weight_decay
    m, v, u = np.zeros(4), np.zeros(4), np.zeros(4)
    buf: np.ndarray | None = None
    mu_product = 1.0
    for t, grad in enumerate(GRADS, start=1):
        g = grad if c.optimizer == "adamw" else grad + wd * w  # AdamW decays the weights
        if c.optimizer == "sgd":  # heavy ball; Nesterov looks one momentum step ahead
            buf = g if buf is None else c.momentum * buf + g
            w = w - lr * (g + c.momentum * buf if c.nesterov and c.momentum else buf)
        elif c.optimizer in ("adam", "adamw"):
            m, v = BETA1 * m + (1 - BETA1) * g, BETA2 * v + (1 - BETA2) * g * g
            if c.optimizer == "adamw":
                w = w * (1 - lr * wd)
            w = w - lr / (1 - BETA1**t) * m / (np.sqrt(v) / np.sqrt(1 - BETA2**t) + ADAM_EPS)
        elif c.optimizer == "adamax":  # the infinity norm instead of the second moment
            m, u = BETA1 * m + (1 - BETA1) * g, np.maximum(BETA2 * u, np.abs(g) + ADAM_EPS)
            w = w - lr / (1 - BETA1**t) * m / u
        elif c.optimizer == "nadam":  # Dozat: Nesterov momentum, with a momentum schedule
            m, v = BETA1 * m + (1 - BETA1) * g, BETA2 * v + (1 - BETA2) * g * g
            mu = BETA1 * (1 - 0.5 * 0.96 ** (t * MOMENTUM_DECAY))
            mu_next = BETA1 * (1 - 0.5 * 0.96 ** ((t + 1) * MOMENTUM_DECAY))
            mu_product *= mu
            denom = np.sqrt(v / (1 - BETA2**t)) + ADAM_EPS
            w = w - lr * (1 - mu) / (1 - mu_product) * g / denom \
                - lr * mu_next / (1 - mu_product * mu_next) * m / denom
        elif c.optimizer == "rmsprop":  # momentum on g / sqrt(mean square), no bias correction
            v = ALPHA * v + (1 - ALPHA) * g * g
            step = g / (np.sqrt(v) + ADAM_EPS)
            buf = step if buf is None else c.momentum * buf + step
            w = w - lr * buf
        elif c.optimizer == "adagrad":
            u = u + g * g  # the sum of squared gradients
            w = w - lr * g / (np.sqrt(u) + ADAGRAD_EPS)
        else:
            raise AssertionError(c.optimizer)
    return w


@pytest.mark.parametrize(("name", "momentum"), [
    ("sgd", 0.9), ("sgd", 0.0), ("adam", 0.9), ("adamw", 0.9), ("adamax", 0.9), ("nadam", 0.9),
    ("rmsprop", 0.9), ("adagrad", 0.9)])
def test_each_optimizer_a_config_names_takes_its_known_steps(name: str, momentum: float) -> None:
    """The optimizer ``build_optimizer`` makes of a config (its learning rate, weight decay,
    momentum and Nesterov flag arriving where each rule uses them) moves the weights by three
    fixed gradients exactly as the rule written out by hand does. SGD with momentum 0 is plain
    SGD (the config's Nesterov flag needs momentum, and is dropped without it)."""
    config = OptimConfig(optimizer=name, lr=0.0123, weight_decay=0.004,  # type: ignore[arg-type]
                         momentum=momentum, nesterov=True)
    w = torch.nn.Parameter(torch.tensor(W0, dtype=DTYPE))
    optimizer = build_optimizer([w], config)
    for grad in GRADS:
        w.grad = torch.tensor(grad, dtype=DTYPE)
        optimizer.step()
    expected = _by_hand(config)
    assert np.abs(expected - W0).max() > 1e-3  # the steps moved the weights
    # torch keeps NAdam's momentum product as a float32 scalar: 4e-10 apart; a wrong rule
    # (another optimizer, a lost weight decay or momentum) is 1e-4 and more
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-8, atol=1e-12)
