"""The package version (one place; ``filterlens --version`` and every result file read it)."""
__version__ = "0.1.0"
