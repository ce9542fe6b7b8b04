"""Test-time adaptation for multimodal sentiment regression: CASP and baselines (`methods`), in three
compiled modes (`modes`: offline epochs as `lax.scan`, online streaming, episodic per-sample `vmap`)."""

from jaxemo.tta import core, methods, modes

__all__ = ["core", "methods", "modes"]
