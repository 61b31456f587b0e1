"""Key store: file format, permissions, rotation, path resolution, no leaks."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from dicom_wm.errors import KeyStoreError
from dicom_wm.keys import KeyStore, default_data_dir, default_keys_path


def test_init_creates_0600_json_with_one_active_key(tmp_path: Path):
    path = tmp_path / "sub" / "keys.json"
    store = KeyStore.init(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["active"] == store.active_id
    assert list(doc["keys"]) == store.ids() == [store.active_id]
    assert base64.b64decode(doc["keys"][store.active_id]) == store.secret(store.active_id)
    assert len(store.secret(store.active_id)) == 32
    assert store.path == path
    assert store.active_id.startswith("k") and len(store.active_id) == 9
    int(store.active_id[1:], 16)


def test_init_refuses_existing_file(tmp_path: Path):
    path = tmp_path / "keys.json"
    path.write_text("precious")
    with pytest.raises(KeyStoreError, match="already exists"):
        KeyStore.init(path)
    assert path.read_text() == "precious"


def test_rotate_adds_active_key_keeps_old_and_saves(tmp_path: Path):
    path = tmp_path / "keys.json"
    store = KeyStore.init(path)
    first = store.active_id
    old_secret = store.secret(first)
    second = store.rotate()
    assert second != first and store.active_id == second
    assert store.ids() == [first, second]
    loaded = KeyStore.load(path)
    assert loaded.active_id == second
    assert loaded.ids() == [first, second]
    assert loaded.secret(first) == old_secret
    assert loaded.secret(second) == store.secret(second) != old_secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]  # no temp file left


def test_two_stores_do_not_share_ids(tmp_path: Path):
    a = KeyStore.init(tmp_path / "a.json")
    b = KeyStore.init(tmp_path / "b.json")
    assert a.active_id != b.active_id


def test_load_missing_names_path(tmp_path: Path):
    path = tmp_path / "nope.json"
    with pytest.raises(KeyStoreError, match=str(path)) as info:
        KeyStore.load(path)
    assert "keys init" in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be an object"),
        ('{"active": "k1", "keys": {"k1": "***"}}', "not valid base64"),
        ('{"active": "k2", "keys": {"k1": "' + base64.b64encode(b"x" * 32).decode() + '"}}', "'k2' is not in the store"),
        ('{"active": "k1", "keys": {"k1": "' + base64.b64encode(b"short").decode() + '"}}', "at least 16 bytes"),
        ('{"active": "k 1", "keys": {"k 1": "' + base64.b64encode(b"x" * 32).decode() + '"}}', "invalid key id"),
        ('{"active": "k1", "keys": {}}', "no keys"),
    ],
)
def test_load_invalid_names_path_and_never_the_secret(tmp_path: Path, content: str, message: str):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(KeyStoreError, match=message) as info:
        KeyStore.load(path)
    assert str(path) in str(info.value)
    assert base64.b64encode(b"x" * 32).decode() not in str(info.value)


def test_unknown_key_id():
    store = KeyStore.in_memory({"k1": b"s" * 32}, "k1")
    with pytest.raises(KeyStoreError, match="unknown key id 'x'"):
        store.secret("x")


def test_in_memory_rotate_does_not_touch_disk(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = KeyStore.in_memory({"k1": b"s" * 32}, "k1")
    new = store.rotate()
    assert store.active_id == new and store.ids() == ["k1", new]
    assert store.path is None
    assert list(tmp_path.iterdir()) == []


def test_repr_has_no_secret(tmp_path: Path):
    secret = b"\x01" * 32
    store = KeyStore.in_memory({"k1": secret}, "k1")
    text = repr(store) + str(store)
    assert "k1" in text
    assert base64.b64encode(secret).decode() not in text and repr(secret) not in text


def test_insecure_permissions_reported(tmp_path: Path):
    path = tmp_path / "keys.json"
    store = KeyStore.init(path)
    assert not store.insecure_permissions()
    path.chmod(0o644)
    assert KeyStore.load(path).insecure_permissions()


def test_rotate_that_cannot_save_changes_nothing(tmp_path: Path, monkeypatch):
    path = tmp_path / "keys.json"
    store = KeyStore.init(path)
    before = path.read_bytes()

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr("dicom_wm.keys.atomic_write_bytes", read_only)
    with pytest.raises(KeyStoreError, match=f"cannot write key store {path}: Read-only"):
        store.rotate()
    assert store.ids() == KeyStore.load(path).ids()
    assert path.read_bytes() == before


def test_path_resolution(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("DICOM_WM_KEYS", raising=False)
    monkeypatch.delenv("DICOM_WM_DATA_DIR", raising=False)
    assert default_keys_path() == Path("dicom-wm-data") / "keys.json"
    assert default_data_dir() == Path("dicom-wm-data")
    assert default_keys_path(data_dir=tmp_path) == tmp_path / "keys.json"
    monkeypatch.setenv("DICOM_WM_DATA_DIR", str(tmp_path / "env-data"))
    assert default_keys_path() == tmp_path / "env-data" / "keys.json"
    assert default_keys_path(data_dir=tmp_path) == tmp_path / "keys.json"
    monkeypatch.setenv("DICOM_WM_KEYS", str(tmp_path / "env-keys.json"))
    assert default_keys_path(data_dir=tmp_path) == tmp_path / "env-keys.json"
    assert default_keys_path(tmp_path / "explicit.json", tmp_path) == tmp_path / "explicit.json"
