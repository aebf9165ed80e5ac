"""Exact first-slot probabilities of Thompson sampling over Beta posteriors.

Candidate i's score is w_i * X_i with X_i ~ Beta(a_i, b_i) (w_i = value x lever x context weight >= 0), and the
highest score wins, so

    P(i wins) = integral over s of g_i(s) * prod_{j != i} G_j(s) ds

with g_j, G_j the density and distribution function of w_j * X_j. The integral is computed by composite
Gauss-Legendre quadrature on one grid of score values shared by every candidate: the panels break at each
candidate's mean +- 1, 2.5, 5 and 10 standard deviations, at its largest score w_j (where its density stops), and
geometrically towards 0 (a small propensity with a < 2 has a sqrt-like density there) and towards w_j when b < 2. The distribution functions
come from the same densities by integrating each panel's interpolating polynomial up to every node (a fixed
"cumulative integration" matrix), so the only special function needed is log-gamma once per candidate: no
incomplete beta function per node, which would cost ~0.4 us each and dominate the decision's time.

Each G_j is normalised by its own total, and the probabilities by theirs: what is left is the quadrature error
(checked against a 200,000-draw Monte Carlo in the tests), not sampling noise, so the logged propensities are the
policy's own and identical for identical inputs. Results are cached by the posterior parameters: rule-based
propensities repeat, model propensities rarely do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

#: Gauss-Legendre nodes per panel: exact for polynomials of degree 15 over a panel, 7 up to a node.
_NODES = 8
#: Panel breaks around each candidate's mean, in standard deviations.
_SPREADS = (-10.0, -5.0, -2.5, -1.0, 0.0, 1.0, 2.5, 5.0, 10.0)
#: Geometric breaks towards a score of 0: the largest score times 2^-1 ... 2^-_HALVINGS.
_HALVINGS = 24
#: No panel is longer than the largest score over this, so the tails are covered too.
_MIN_PANELS = 32


@lru_cache(maxsize=1)
def _rule() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-1, 1], and the matrix taking a panel's density values at the nodes to
    the integral from the panel's start to each node (of the polynomial through those values)."""
    legendre = np.polynomial.legendre
    nodes, weights = legendre.leggauss(_NODES)
    vandermonde = legendre.legvander(nodes, _NODES - 1)  # [node, degree] = P_degree(node)
    antiderivatives = np.stack(
        [legendre.legval(nodes, legendre.legint(np.eye(_NODES)[degree], lbnd=-1)) for degree in range(_NODES)],
        axis=1,
    )  # [node, degree] = integral of P_degree from -1 to node
    return nodes, weights, antiderivatives @ np.linalg.inv(vandermonde)


def first_probabilities(propensities: Sequence[float], worths: Sequence[float], strength: float) -> tuple[float, ...]:
    """P(each candidate's sampled score is the highest), where candidate i's propensity is drawn from
    Beta(1 + strength * p_i, 1 + strength * (1 - p_i)) and its score is worth_i times that draw. They sum to one.
    Ties can only happen when every worth is 0; then the first candidate wins (as an argmax would pick it)."""
    key = tuple(zip((float(p) for p in propensities), (float(w) for w in worths), strict=True))
    return _first_probabilities(key, float(strength))


@lru_cache(maxsize=4096)
def _first_probabilities(candidates: tuple[tuple[float, float], ...], strength: float) -> tuple[float, ...]:
    k = len(candidates)
    live = [i for i, (_, worth) in enumerate(candidates) if worth > 0]
    if len(live) <= 1:  # a zero worth scores 0 for sure: the one positive worth (or the first, on a tie) wins
        winner = live[0] if live else 0
        return tuple(float(i == winner) for i in range(k))
    p = np.array([min(max(candidates[i][0], 0.0), 1.0) for i in live])
    w = np.array([candidates[i][1] for i in live])
    a, b = 1 + strength * p, 1 + strength * (1 - p)
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))

    top = float(w.max())
    breaks = [
        np.zeros(1),
        w,
        (w[:, None] * np.clip(mean[:, None] + np.array(_SPREADS)[None, :] * sd[:, None], 0, 1)).ravel(),
        top * 0.5 ** np.arange(1, _HALVINGS + 1),
        np.linspace(0, top, _MIN_PANELS + 1),
        # b < 2: the density behaves like (1 - x)^(b - 1) at the top of its range, as steep as at 0 above.
        (w[b < 2][:, None] * (1 - 0.5 ** np.arange(1, _HALVINGS + 1))[None, :]).ravel(),
    ]
    edges = np.unique(np.concatenate(breaks))
    edges = edges[edges <= top]
    start, width = edges[:-1], np.diff(edges)
    nodes, weights, cumulative = _rule()
    scores = (start[:, None] + (nodes[None, :] + 1) * (width[:, None] / 2)).ravel()  # [panel * node]

    # Densities of every score variable at every node: f(s / w) / w, zero beyond its largest score.
    x = scores[None, :] / w[:, None]
    inside = x < 1
    x = np.where(inside, x, 0.5)  # any value in (0, 1): masked out below, avoids log(0) warnings
    log_norm = np.array([math.lgamma(ai + bi) - math.lgamma(ai) - math.lgamma(bi) for ai, bi in zip(a, b, strict=True)])
    log_density = (a - 1)[:, None] * np.log(x) + (b - 1)[:, None] * np.log1p(-x) + (log_norm - np.log(w))[:, None]
    density = np.where(inside, np.exp(log_density), 0.0).reshape(len(live), len(start), _NODES)

    half = width / 2
    panel_mass = half[None, :] * (density @ weights)  # [candidate, panel]
    before = np.cumsum(panel_mass, axis=1) - panel_mass
    distribution = before[:, :, None] + half[None, :, None] * (density @ cumulative.T)
    distribution /= panel_mass.sum(axis=1)[:, None, None]  # each G_j ends at exactly 1
    distribution = np.clip(distribution, 0.0, 1.0).reshape(len(live), -1)

    # prod_{j != i} G_j at each node, from prefix and suffix products (no division by a G that may be 0).
    ones = np.ones((1, scores.size))
    prefix = np.cumprod(np.vstack([ones, distribution[:-1]]), axis=0)
    suffix = np.cumprod(np.vstack([ones, distribution[:0:-1]]), axis=0)[::-1]
    others = prefix * suffix
    node_weight = (half[:, None] * weights[None, :]).ravel()
    wins = (density.reshape(len(live), -1) * others) @ node_weight
    wins = np.clip(wins, 0.0, None)
    wins /= wins.sum()
    probabilities = [0.0] * k
    for index, probability in zip(live, wins, strict=True):
        probabilities[index] = float(probability)
    return tuple(probabilities)
