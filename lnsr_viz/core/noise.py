"""Noise injectors: Gaussian and in-manifold perturbations of hidden states.

Every injector has one verb, ``inject(hidden, mask, generator=...)``, returns the *noise* ``e`` (not ``h + e``) with
padding positions exactly zero, and draws from an explicit ``torch.Generator`` so that probes and regularisers are
reproducible from a seed.

Scale
-----
``scale_kind="relative"`` (the paper's Figure 1 convention): every real token gets noise whose L2 norm is exactly
``scale * ||h_t||`` (a uniformly random direction). ``scale_kind="absolute"``: i.i.d. ``N(0, scale^2)`` per coordinate.

In-manifold noise (our reconstruction; the paper does not give its construction)
-------------------------------------------------------------------------------
The hidden states of the real tokens in the batch at that layer span a low-dimensional data manifold; its tangent
directions are approximated by the top ``n_components`` principal directions of those states (PCA of the centred
token states, computed without gradient). In-manifold noise is a Gaussian draw projected onto that subspace and then
rescaled per token to the norm of the Gaussian noise it is compared with (``scale * ||h_t||`` for relative scale, the
norm of an i.i.d. ``N(0, scale^2 I)`` draw for absolute scale). So Gaussian and in-manifold noise differ only in
direction, never in size.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..utils.params import GetParams
from ..utils.validation import check_choice, check_number, check_positive_int

__all__ = ["NoiseInjector", "GaussianNoise", "InManifoldNoise", "make_noise", "NOISE_TYPES"]

ScaleKind = Literal["relative", "absolute"]
NOISE_TYPES = ("gaussian", "in_manifold")


#: The largest noise scale (relative or absolute): beyond it the change norms of float32 models overflow.
MAX_SCALE = 1e6


class NoiseInjector(GetParams):
    """Base class: a noise distribution over hidden states with a scale and a scale kind."""

    name: str = "noise"

    def __init__(self, scale: float = 0.05, *, scale_kind: ScaleKind = "relative") -> None:
        owner = type(self).__name__
        self.scale = float(check_number("scale", scale, owner=owner, low=0.0, high=MAX_SCALE,
                                        hint="Use 0 for no noise; a relative scale is a fraction of the token norm. "
                                             f"Above {MAX_SCALE:g} the float32 norms of the change overflow to inf "
                                             "and the statistics to NaN, so such scales are refused."))
        self.scale_kind = check_choice("scale_kind", scale_kind, ("relative", "absolute"), owner=owner)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale!r}, scale_kind={self.scale_kind!r})"

    def inject(self, hidden: torch.Tensor, mask: torch.Tensor | None = None, *,
               generator: torch.Generator | None = None, return_ratio: bool = False
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw noise for ``hidden`` (batch, seq, dim); zero at padding (``mask`` False).

        With ``return_ratio=True`` also return the achieved per-token ratio ||e_t|| / ||h_t|| (batch, seq), a
        self-check of the requested scale.
        """
        if hidden.dim() != 3:
            raise ValueError(f"hidden must have shape (batch, seq, dim); got {tuple(hidden.shape)}.")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if mask.shape != hidden.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden {tuple(hidden.shape[:2])}.")
        mask = mask.bool()
        with torch.no_grad():
            direction = self._draw(hidden, mask, generator)  # unscaled, (batch, seq, dim)
            if self.scale_kind == "relative":
                target = self.scale * hidden.detach().norm(dim=-1, keepdim=True)
            else:
                gauss = _randn(hidden.shape, hidden, generator)
                target = self.scale * gauss.norm(dim=-1, keepdim=True)
            norm = direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(hidden.dtype).tiny)
            noise = direction / norm * target
            noise = noise * mask.unsqueeze(-1).to(noise.dtype)
        if return_ratio:
            ratio = noise.norm(dim=-1) / hidden.detach().norm(dim=-1).clamp_min(torch.finfo(hidden.dtype).tiny)
            return noise, ratio
        return noise

    def inject_draws(self, hidden: torch.Tensor, mask: torch.Tensor, n_draws: int, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """``n_draws`` independent noise draws stacked draw-major: shape (n_draws * batch, seq, dim)."""
        return self.inject(hidden.repeat(n_draws, 1, 1), mask.repeat(n_draws, 1), generator=generator)

    def _draw(self, hidden: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


def _randn(shape: torch.Size | tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    out = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype)


class GaussianNoise(NoiseInjector):
    """Isotropic Gaussian noise: a uniformly random direction per token, scaled as described in the module doc.

    Parameters
    ----------
    scale : float, default=0.05
        Relative: fraction of each token's hidden-state norm (5% as in the paper's Figure 1). Absolute: sigma.
    scale_kind : {'relative', 'absolute'}, default='relative'
    """

    name = "gaussian"

    def _draw(self, hidden: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return _randn(hidden.shape, hidden, generator)


class InManifoldNoise(NoiseInjector):
    """Noise restricted to the top principal directions of the batch's real-token hidden states.

    Parameters
    ----------
    scale, scale_kind
        As for :class:`GaussianNoise`; the noise has the same per-token norm as the Gaussian it is compared with.
    n_components : int, default=16
        Dimension of the subspace (capped at the number of real tokens - 1 and the hidden size).
    """

    name = "in_manifold"

    def __init__(self, scale: float = 0.05, *, scale_kind: ScaleKind = "relative", n_components: int = 16) -> None:
        super().__init__(scale, scale_kind=scale_kind)
        self.n_components = check_positive_int("n_components", n_components, owner=type(self).__name__)

    def __repr__(self) -> str:
        return (f"InManifoldNoise(scale={self.scale!r}, scale_kind={self.scale_kind!r}, "
                f"n_components={self.n_components!r})")

    def basis(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Orthonormal basis (dim, q) of the top-q principal directions of the real-token states."""
        tokens = hidden.detach()[mask.bool()].to(torch.float64)
        if tokens.shape[0] < 2:
            raise ValueError("in-manifold noise needs at least 2 real tokens in the batch to estimate directions.")
        centred = tokens - tokens.mean(dim=0, keepdim=True)
        q = min(self.n_components, tokens.shape[0] - 1, tokens.shape[1])
        # Right singular vectors of the centred token matrix = principal directions.
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        return vh[:q].T.to(hidden.dtype)

    def inject_draws(self, hidden: torch.Tensor, mask: torch.Tensor, n_draws: int, *,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """As the base class, but the principal directions come from the clean batch once, not per copy."""
        self._basis_cache = self.basis(hidden, mask)
        try:
            return super().inject_draws(hidden, mask, n_draws, generator=generator)
        finally:
            self._basis_cache = None

    _basis_cache: torch.Tensor | None = None

    def _draw(self, hidden: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        basis = self._basis_cache if self._basis_cache is not None else self.basis(hidden, mask)  # (dim, q)
        coeffs = _randn((*hidden.shape[:2], basis.shape[1]), hidden, generator)
        return coeffs @ basis.T


def make_noise(noise: str | NoiseInjector = "gaussian", *, scale: float = 0.05, scale_kind: ScaleKind = "relative",
               n_components: int = 16) -> NoiseInjector:
    """Build an injector from its name (``gaussian`` or ``in_manifold``), or return an injector unchanged."""
    if isinstance(noise, NoiseInjector):
        return noise
    check_choice("noise", noise, NOISE_TYPES, owner="make_noise")
    if noise == "gaussian":
        return GaussianNoise(scale, scale_kind=scale_kind)
    return InManifoldNoise(scale, scale_kind=scale_kind, n_components=n_components)
