"""REML fit of a linear mixed model with a small random effect per group, from per-group
sufficient statistics: the model statsmodels' MixedLM fits, in seconds for 50,000 groups.

Model: y_i = X_i β + Z_i b_i + e_i per group i, b_i ~ N(0, σ²Ψ), e_i ~ N(0, σ²I). With
S_i = Z_i'Z_i and K_i = (I + S_iΨ)⁻¹ (Woodbury), every quantity the restricted likelihood needs
is a sum over groups of q×q or q×p products:

    A'V_i⁻¹B = A'B − (Z_i'A)' Ψ K_i (Z_i'B)      log|V_i/σ²| = log|I + S_iΨ|

so the data are reduced once to (n_groups, q, ·) arrays and every evaluation is a few batched
numpy operations. β and σ² are profiled out; the q(q+1)/2 Cholesky parameters of Ψ are found
with L-BFGS-B on the analytic gradient. The fixed effects' covariance is the one statsmodels
reports: the fixed-effect block of the inverse observed Hessian of the REML log-likelihood in
(β, Ψ) — not just σ²(X'V⁻¹X)⁻¹, which ignores the (small) β–Ψ cross terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

BOUNDARY_VARIANCE = 0.01  # statsmodels' threshold for "the MLE may be on the boundary"


@dataclass
class RemlFit:
    """A REML fit: β, its covariance, σ² (scale) and the random effects' covariance σ²Ψ."""

    beta: np.ndarray
    cov_beta: np.ndarray
    scale: float
    cov_re: np.ndarray
    converged: bool
    groups: int
    observations: int
    iterations: int
    reml_objective: float  # −2 × restricted log-likelihood, up to a constant
    warnings: list[str] = field(default_factory=list)


class GroupStats:
    """Per-group sufficient statistics of (y, X, Z): the only view of the data a fit needs."""

    def __init__(self, y: np.ndarray, x: np.ndarray, z: np.ndarray, groups: np.ndarray):
        y = np.asarray(y, dtype=float)
        x = np.asarray(x, dtype=float)
        z = np.asarray(z, dtype=float)
        if not (len(y) == len(x) == len(z) == len(groups)):
            raise ValueError("y, X, Z and groups need one row per observation")
        if not (np.isfinite(y).all() and np.isfinite(x).all() and np.isfinite(z).all()):
            raise ValueError("the data hold non-finite values")
        codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        order = np.argsort(codes, kind="stable")
        codes, y, x, z = codes[order], y[order], x[order], z[order]
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        self.n, self.p, self.q = len(y), x.shape[1], z.shape[1]
        self.groups = len(starts)
        self.zz = np.add.reduceat(z[:, :, None] * z[:, None, :], starts, axis=0)
        self.zx = np.add.reduceat(z[:, :, None] * x[:, None, :], starts, axis=0)
        self.zy = np.add.reduceat(z * y[:, None], starts, axis=0)
        self.xx = x.T @ x
        self.xy = x.T @ y
        self.yy = float(y @ y)


def _inv_logdet(m: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverses of a stack of matrices and the sum of their log-determinants (closed form
    for 2×2, the random intercept and slope); raises LinAlgError unless every det > 0."""
    if m.shape[1] == 2:
        a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        det = a * d - b * c
        if not np.all(det > 0):
            raise np.linalg.LinAlgError("the covariance matrix is not positive definite")
        inv = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2) / det[:, None, None]
        return inv, float(np.log(det).sum())
    sign, logdet = np.linalg.slogdet(m)
    if np.any(sign <= 0):
        raise np.linalg.LinAlgError("the covariance matrix is not positive definite")
    return np.linalg.inv(m), float(logdet.sum())


def _psi(theta: np.ndarray, q: int) -> np.ndarray:
    lower = np.zeros((q, q))
    lower[np.tril_indices(q)] = theta
    return lower @ lower.T


class _Reml:
    """The restricted likelihood of one data set as a function of Ψ (and β)."""

    def __init__(self, st: GroupStats):
        self.st = st
        self.dof = st.n - st.p
        if self.dof <= 0:
            raise ValueError(f"{st.n} observations cannot fit {st.p} fixed effects")

    def parts(self, psi: np.ndarray):
        """K_i, Σ log|I+S_iΨ|, X'V⁻¹X, X'V⁻¹y and the per-group Z'V⁻¹X, Z'V⁻¹y."""
        st = self.st
        m = np.eye(st.q) + st.zz @ psi
        k, logdet = _inv_logdet(m)
        kzx = k @ st.zx  # Z_i'V_i⁻¹X_i
        kzy = (k @ st.zy[:, :, None])[:, :, 0]  # Z_i'V_i⁻¹y_i
        # A'V⁻¹B = A'B − (Z'A)'Ψ K (Z'B), summed over groups (tensordot: one BLAS call)
        xvx = st.xx - np.tensordot(st.zx, psi @ kzx, axes=([0, 1], [0, 1]))
        xvy = st.xy - np.tensordot(st.zx, kzy @ psi.T, axes=([0, 1], [0, 1]))
        return k, logdet, xvx, xvy, kzx, kzy

    def yvy(self, psi: np.ndarray, kzy: np.ndarray) -> float:
        """y'V⁻¹y (relative to σ²)."""
        return self.st.yy - float(np.sum(self.st.zy * (kzy @ psi.T)))

    def profiled(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """−2 × REML log-likelihood with β and σ² profiled out, and its gradient in θ."""
        q = self.st.q
        lower = np.zeros((q, q))
        lower[np.tril_indices(q)] = theta
        psi = lower @ lower.T
        try:
            k, logdet, xvx, xvy, kzx, kzy = self.parts(psi)
            chol = np.linalg.cholesky(xvx)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros_like(theta)
        beta = np.linalg.solve(xvx, xvy)
        quad = self.yvy(psi, kzy) - beta @ xvy  # r'V⁻¹r at the GLS β
        if not quad > 0:
            return np.inf, np.zeros_like(theta)
        value = logdet + 2 * np.log(np.diag(chol)).sum() + self.dof * np.log(quad)
        grad_psi = self._grad_psi(k, xvx, kzx, kzy - kzx @ beta, quad)
        grad_lower = 2 * grad_psi @ lower  # d tr(GΨ) with Ψ = LL'
        return float(value), grad_lower[np.tril_indices(q)]

    def _grad_psi(self, k, xvx, kzx, kzr, quad) -> np.ndarray:
        """∂(−2ℓ)/∂Ψ (Ψ's entries taken as independent; symmetric) at a given β."""
        st = self.st
        g_logdet = np.sum(k @ st.zz, axis=0).T  # Σ (K S)ᵀ, symmetric
        c = np.linalg.inv(xvx)
        g_xvx = -np.tensordot(kzx @ c, kzx, axes=([0, 2], [0, 2]))
        g_quad = -kzr.T @ kzr
        g = g_logdet + g_xvx + self.dof / quad * g_quad
        return (g + g.T) / 2

    def full_gradient(self, beta: np.ndarray, vech: np.ndarray) -> np.ndarray:
        """∂(−2ℓ)/∂(β, vech Ψ) of the REML criterion with β free (statsmodels' parameters)."""
        q = self.st.q
        psi = np.zeros((q, q))
        psi[np.tril_indices(q)] = vech
        psi = psi + np.tril(psi, -1).T
        k, _, xvx, xvy, kzx, kzy = self.parts(psi)
        quad = self.yvy(psi, kzy) - 2 * beta @ xvy + beta @ xvx @ beta
        g_beta = -2 * self.dof * (xvy - xvx @ beta) / quad
        g = self._grad_psi(k, xvx, kzx, kzy - kzx @ beta, quad)
        # an off-diagonal entry of vech Ψ moves both of its symmetric cells
        g_vech = (g * (2 - np.eye(q)))[np.tril_indices(q)]
        return np.r_[g_beta, g_vech]


def fit_reml(y, x, z, groups, *, maxiter: int = 500, start: np.ndarray | None = None
             ) -> RemlFit:
    """REML fit of y = Xβ + Zb + e with one random effect vector b per group.

    `x` (n×p) and `z` (n×q) are dense design matrices, `groups` one label per row (or `y`
    a `GroupStats` of them, the rest None). Raises ValueError on data that cannot be fitted
    (too few rows, non-finite values).
    """
    st = y if isinstance(y, GroupStats) else GroupStats(y, x, z, groups)
    reml = _Reml(st)
    q = st.q
    ix = np.tril_indices(q)
    theta0 = np.eye(q)[ix] if start is None else np.asarray(start, float)
    res = optimize.minimize(reml.profiled, theta0, jac=True, method="L-BFGS-B",
                            options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-9,
                                     "maxcor": 20})
    if not np.isfinite(res.fun):
        raise ValueError("the mixed model could not be evaluated at any covariance")
    psi = _psi(res.x, q)
    _, _, xvx, xvy, _, kzy = reml.parts(psi)
    beta = np.linalg.solve(xvx, xvy)
    quad = reml.yvy(psi, kzy) - beta @ xvy
    scale = float(quad / reml.dof)
    notes = []
    # a line search that cannot improve at machine precision ends at the optimum too: the
    # decrease a Newton step would still bring (in −2ℓ units) says whether it did
    converged = bool(res.success) or _predicted_decrease(res) < 1e-4
    if not converged:
        notes.append(f"REML optimisation did not converge: {res.message}")
    cov_re = scale * psi
    if np.min(np.abs(np.diag(cov_re))) < BOUNDARY_VARIANCE:
        notes.append("The MLE may be on the boundary of the parameter space.")
    cov_beta, why = _fe_covariance(reml, beta, psi, scale, xvx)
    if why:
        notes.append(why)
    return RemlFit(beta=beta, cov_beta=cov_beta, scale=scale, cov_re=cov_re,
                   converged=converged, groups=st.groups, observations=st.n,
                   iterations=int(res.nit), reml_objective=float(res.fun), warnings=notes)


def _predicted_decrease(res) -> float:
    """½ g'H⁻¹g of an L-BFGS-B result (its own inverse-Hessian approximation)."""
    g = np.asarray(res.jac, dtype=float)
    try:
        return float(0.5 * g @ res.hess_inv.matvec(g))
    except (AttributeError, ValueError):
        return float("inf")


def _fe_covariance(reml: _Reml, beta, psi, scale, xvx) -> tuple[np.ndarray, str]:
    """The β block of the inverse observed information in (β, vech Ψ), as statsmodels
    reports it; σ²(X'V⁻¹X)⁻¹ where that Hessian cannot be inverted (Ψ on the boundary)."""
    q, p = psi.shape[0], len(beta)
    vech = psi[np.tril_indices(q)]
    point = np.r_[beta, vech]
    # central differences of the analytic gradient: steps scaled to each parameter
    floor = np.r_[np.full(p, np.sqrt(scale)), np.full(len(vech), 1e-2)]
    steps = 1e-5 * np.maximum(np.abs(point), floor)
    hess = np.empty((len(point), len(point)))
    try:
        for j, h in enumerate(steps):
            up, down = point.copy(), point.copy()
            up[j] += h
            down[j] -= h
            hess[:, j] = (reml.full_gradient(up[:p], up[p:])
                          - reml.full_gradient(down[:p], down[p:])) / (2 * h)
        hess = (hess + hess.T) / 2
        # −2ℓ's Hessian is twice the information: cov = 2 H⁻¹
        cov = 2 * np.linalg.inv(hess)[:p, :p]
        if np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0):
            return cov, ""
    except np.linalg.LinAlgError:
        pass
    return scale * np.linalg.inv(xvx), ("the fixed effects' covariance ignores the "
                                        "random effects' uncertainty (singular Hessian)")
