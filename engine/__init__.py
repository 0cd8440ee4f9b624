"""Automation engine for ML experiment tracking on TimescaleDB."""

__version__ = "0.1.0"
