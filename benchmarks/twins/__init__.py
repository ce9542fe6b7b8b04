"""Small reference implementations in other frameworks, used by parity tests and benchmarks.

Nothing here is imported by the rest of jaxemo; each module imports its framework only when used.
"""
