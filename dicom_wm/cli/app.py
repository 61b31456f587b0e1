"""The ``dicom-wm`` command: one root Typer app; each module in
:data:`COMMAND_MODULES` adds its commands through ``register(app)``."""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from dicom_wm import __version__
from dicom_wm.allocator import tune_allocator
from dicom_wm.cli import archive, audit, destinations, files, keys, service, trace

__all__ = ["app", "main", "COMMAND_MODULES"]

app = typer.Typer(
    name="dicom-wm",
    help="Reversible, authenticated watermarks for DICOM pixel data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMAND_MODULES = (keys, files, service, destinations, audit, trace, archive)
for _module in COMMAND_MODULES:
    _module.register(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dicom-wm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Reversible, authenticated watermarks for DICOM pixel data."""


def main() -> None:
    """Console-script entry point."""
    # pydicom's warnings about odd-but-readable input would break the
    # one-line-per-file output; real problems are reported per file.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
    tune_allocator()  # serve, worker and the file commands; forked workers inherit it
    app()
