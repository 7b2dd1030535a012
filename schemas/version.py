"""saekit's version: one source of truth, in the lowest layer so every layer can read it.

pyproject.toml reads it (``[tool.setuptools.dynamic]``); ``saekit.__version__`` re-exports it.
"""

__version__ = "0.1.0"
