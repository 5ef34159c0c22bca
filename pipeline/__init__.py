"""Riposte: a security-response pipeline for AWS."""

__version__ = "0.1.0"
