"""(being written)"""

import typer


def register(app: typer.Typer) -> None:
    """Mount this module's commands on the main app."""
