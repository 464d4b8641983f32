"""trunkline: the ground floor (`trunkline.core`) every service stands on, and the
operator's CLI and stack orchestration on top (`trunkline.cli`, `trunkline.stack`).

This package file imports nothing, so importing `trunkline.core` never pulls in the top
floor (the import-linter contracts in pyproject.toml keep it so)."""

__version__ = "0.1.0"
