"""`trunkline`: the operator's command line (the top floor)."""

from trunkline.cli.main import main

__all__ = ["main"]
