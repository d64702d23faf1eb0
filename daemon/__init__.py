"""Strandline daemon: watch data, fingerprint it, version every quiet change-set, publish it."""

__version__ = "0.1.0"
