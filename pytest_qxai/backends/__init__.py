"""Quantization backends: one adapter per library behind :class:`pytest_qxai.backends.base.QuantBackend`."""
