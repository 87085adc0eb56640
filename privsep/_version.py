"""The package's version, in a module of its own: the broker and bench read it without importing
the package root (which pulls in the public API)."""

__version__ = "0.1.0"
