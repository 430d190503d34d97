"""pytest-qxai: a pytest plugin that gates quantized LLM releases on explainability and interpretability.

The plugin compares a quantized model with its full-precision reference on the same items
(self-explanations, faithfulness, attributions, knowledge and multi-hop probes) and gates each
metric with paired statistics, tolerance bands and stored baselines.
"""

from __future__ import annotations

__version__ = "0.1.0"
