"""(being written)"""

import typer


def register(app: typer.Typer, registry_app: typer.Typer) -> None:
    """Mount this module's commands on the main app and the registry group."""
