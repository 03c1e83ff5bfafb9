"""Stage 2, the probing core: the model adapter, noise, the stability probe, and model inputs.

Modules: :mod:`~lnsr_viz.core.adapter` (every probe point of any transformer has a name: ``embed``, ``blocks.i``),
:mod:`~lnsr_viz.core.noise` (Gaussian and in-manifold noise), :mod:`~lnsr_viz.core.probe` (``StabilityProbe``),
:mod:`~lnsr_viz.core.inputs` (texts / datasets / model ids to tokenised batches on the right device, eval mode).
"""
