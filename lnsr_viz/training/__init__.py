"""Stage 4, training: the fine-tuning loop, its callbacks, the tasks, Hugging Face ``Trainer`` and several processes.

Modules: :mod:`~lnsr_viz.training.loop` (``FineTuner``, ``FineTunerCallback``), :mod:`~lnsr_viz.training.collapse`
(``CollapseGuard``), :mod:`~lnsr_viz.training.tasks` (classification and QA behind one interface),
:mod:`~lnsr_viz.training.hf_trainer` (``RegularizedTrainer``), :mod:`~lnsr_viz.training.distributed` (torchrun).
"""
