"""Stage 0, shared by every stage: parameter checks, constructor parameters, atomic files, the t-interval, extras.

Imports nothing else from the package. Modules: :mod:`~lnsr_viz.utils.validation` (one message template for bad
parameters), :mod:`~lnsr_viz.utils.params` (``get_params``), :mod:`~lnsr_viz.utils.io` (atomic writers, sha256),
:mod:`~lnsr_viz.utils.intervals` (the Student-t interval), :mod:`~lnsr_viz.utils.extras` (optional dependencies),
:mod:`~lnsr_viz.utils.precision` (fp32 / bf16: the hardware check and the autocast context).
"""
