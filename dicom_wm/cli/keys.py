"""``dicom-wm keys init|list|rotate``: the key store, never its secrets."""

from __future__ import annotations

import json
import stat

import typer
from rich.table import Table

from dicom_wm.cli.common import EXIT_FAILED, DataDirOpt, JsonOpt, KeysOpt, err_console, fail, load_keystore, out_console
from dicom_wm.errors import KeyStoreError
from dicom_wm.keys import KeyStore, default_keys_path

__all__ = ["register", "keys_app"]

keys_app = typer.Typer(help="Manage the key store (key id -> secret; the active id signs new embeds).", no_args_is_help=True)


@keys_app.command("init")
def init(keys: KeysOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Create the key store (mode 0600) with one fresh random active key."""
    path = default_keys_path(keys, data_dir)
    try:
        store = KeyStore.init(path)
    except KeyStoreError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        typer.echo(json.dumps({"path": str(path), "key_id": store.active_id, "active": True}))
    else:
        typer.echo(f"created key store {path} (mode 0600) with active key {store.active_id}")


@keys_app.command("list")
def list_keys(keys: KeysOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show key ids and which one is active (never the secrets)."""
    store = load_keystore(keys, data_dir)
    if store.insecure_permissions() and store.path is not None:
        mode = stat.S_IMODE(store.path.stat().st_mode)
        err_console.print(
            f"warning: key store {store.path} is accessible to group/others (mode {mode:04o}); chmod 600 it",
            markup=False,
        )
    if as_json:
        for key_id in store.ids():
            typer.echo(json.dumps({"key_id": key_id, "active": key_id == store.active_id}))
        return
    table = Table(title=str(store.path), title_justify="left")
    table.add_column("key id")
    table.add_column("active")
    for key_id in store.ids():
        table.add_row(key_id, "yes" if key_id == store.active_id else "")
    out_console.print(table)


@keys_app.command("rotate")
def rotate(keys: KeysOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Add a fresh key and make it active; older keys still verify."""
    store = load_keystore(keys, data_dir)
    previous = store.active_id
    try:
        new = store.rotate()
    except KeyStoreError as exc:
        fail(str(exc), EXIT_FAILED)
    if as_json:
        typer.echo(json.dumps({"path": str(store.path), "key_id": new, "active": True, "previous": previous}))
    else:
        typer.echo(f"new active key {new} in {store.path}; {previous} and older keys still verify")


def register(app: typer.Typer) -> None:
    """Add the ``keys`` group to ``app``."""
    app.add_typer(keys_app, name="keys")
