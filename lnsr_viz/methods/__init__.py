"""Fine-tuning methods behind one interface: a task loss plus (optionally) a regulariser.

Every method is a :class:`~lnsr_viz.methods.base.Method` with one verb, ``compute_loss(model, inputs) -> LossParts``
(also ``__call__``), one module each, registered by name in :data:`METHODS` (:func:`register`). LNSR is in
:mod:`lnsr_viz.methods.lnsr` (with what is from the papers and what is our reconstruction); the rivals follow.

Each class follows its paper and public implementation; where the two disagree, or the paper leaves a choice open,
the class docstring says which one is followed and the other is a parameter. Definitions and defaults are those of
the project's method notes (``docs`` / ``shared/notes/method.md``).

===============  =======  ====================================================================================
name             role     what it does
===============  =======  ====================================================================================
``l2sp``         penalty  ``alpha/2 * ||w - w_pre||^2`` over the pre-trained weights (Li et al., ICML 2018)
``mixout``       passive  linear weights mixed with their pre-trained values (Lee et al., ICLR 2020)
``smart``        forward  adversarial smoothness on the input embeddings, + Bregman option (Jiang et al., ACL 2020)
``r3f``          forward  symmetric KL, clean vs noised-embedding predictions (Aghajanyan et al., ICLR 2021)
``rdrop``        forward  two dropout passes, task loss + bidirectional KL (Liang et al., NeurIPS 2021)
``noisytune``    passive  one uniform perturbation of every weight matrix before training (Wu et al., ACL 2022)
``hype``         passive  small noise on every block's input hidden states in training (Yuan et al., ACL 2023)
``childtuning``  passive  gradient masks: Bernoulli(p)/p (F) or a Fisher child network (D) (Xu et al., EMNLP 2021)
===============  =======  ====================================================================================

Roles decide how methods combine (see :class:`~lnsr_viz.methods.base.Combined`). Every class registers itself in
:data:`METHODS` when this package is imported, so ``get_method``, ``compare(methods=...)`` and ``--methods`` know
every name.

Conventions shared by all methods: ``LossParts.reg_loss`` is the regulariser's unweighted term and
``loss = task_loss + weight * reg_loss``; perturbations of the input embeddings (SMART, R3F) are added to the output
of ``model.get_input_embeddings()`` by a forward hook, so the model is still called with ``input_ids`` (position ids,
padding detection and heads that locate tokens from the ids behave as usual); random draws come from a generator
seeded from the trainer's seed (and the process rank where noise must differ per process), except Mixout's masks,
which use torch's global generator like dropout.
"""

from __future__ import annotations

# Import order = registration order = the canonical order of names in a combination: keep it.
# isort: off
from .base import LossParts, Method, symmetric_kl, unwrap_model
from .registry import METHODS, RIVALS, register
from .vanilla import Vanilla
from .lnsr import LNSR, lnsr_penalty
from .l2sp import L2SP
from .mixout import Mixout
from .smart import SMART
from .r3f import R3F
from .rdrop import RDrop
from .noisytune import NoisyTune
from .hype import HyPe
from .childtuning import ChildTuning
from .combined import Combined, compose, get_method
# isort: on

__all__ = ["Method", "LossParts", "METHODS", "RIVALS", "register", "get_method", "compose", "Combined", "Vanilla",
           "LNSR", "lnsr_penalty", "L2SP", "Mixout", "SMART", "R3F", "RDrop", "NoisyTune", "HyPe", "ChildTuning",
           "symmetric_kl", "unwrap_model"]
