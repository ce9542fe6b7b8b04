"""jaxemo: fast JAX reimplementations of affective-computing systems."""

__version__ = "0.1.0"
