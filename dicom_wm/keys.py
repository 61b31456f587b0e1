"""The key store: key id -> HMAC secret, one of them active.

On disk it is a JSON file ``{"active": id, "keys": {id: base64 secret}}``
created with mode 0600. New embeds are signed with the active key; every key
in the store still verifies, so rotation never orphans archived instances.

Secrets never leave this module except through :meth:`KeyStore.secret`; no
``repr``, error message or log line contains one.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from pathlib import Path

from dicom_wm.errors import KeyStoreError
from dicom_wm.fileio import atomic_write_bytes

__all__ = [
    "KeyStore",
    "default_data_dir",
    "default_keys_path",
    "DATA_DIR_ENV",
    "KEYS_ENV",
    "DEFAULT_DATA_DIR",
    "SECRET_BYTES",
]

DATA_DIR_ENV = "DICOM_WM_DATA_DIR"
KEYS_ENV = "DICOM_WM_KEYS"
DEFAULT_DATA_DIR = Path("dicom-wm-data")
SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


def default_data_dir(data_dir: Path | None = None) -> Path:
    """``data_dir`` if given, else env ``DICOM_WM_DATA_DIR``, else ``./dicom-wm-data``."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return DEFAULT_DATA_DIR


def default_keys_path(keys: Path | None = None, data_dir: Path | None = None) -> Path:
    """Where the key store lives.

    ``keys`` if given, else env ``DICOM_WM_KEYS``, else ``<data dir>/keys.json``
    with the data dir from :func:`default_data_dir`.
    """
    if keys is not None:
        return Path(keys)
    env = os.environ.get(KEYS_ENV)
    if env:
        return Path(env)
    return default_data_dir(data_dir) / "keys.json"


def _new_key_id(taken: set[str]) -> str:
    while True:
        key_id = "k" + secrets.token_hex(4)
        if key_id not in taken:
            return key_id


def _check_key_id(key_id: object, where: str) -> str:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise KeyStoreError(f"{where}: invalid key id {key_id!r} (1-32 of A-Z a-z 0-9 . _ -)")
    return key_id


class KeyStore:
    """Key id -> secret, with one active id.

    Build one with :meth:`init` (new file), :meth:`load` (existing file) or
    :meth:`in_memory` (tests, callers holding secrets elsewhere).
    """

    def __init__(self, keys: dict[str, bytes], active: str, path: Path | None) -> None:
        where = str(path) if path is not None else "in-memory key store"
        if not keys:
            raise KeyStoreError(f"{where}: no keys")
        for key_id, secret in keys.items():
            _check_key_id(key_id, where)
            if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
                raise KeyStoreError(f"{where}: secret of key {key_id!r} must be at least {MIN_SECRET_BYTES} bytes")
        if active not in keys:
            raise KeyStoreError(f"{where}: active key id {active!r} is not in the store")
        self._keys = dict(keys)
        self._active = active
        self._path = path

    # -- construction -------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> KeyStore:
        """Create a new key store file at ``path`` holding one fresh active key.

        The parent directory is created if needed. Raises
        :class:`~dicom_wm.errors.KeyStoreError` if ``path`` already exists.
        """
        p = Path(path)
        key_id = _new_key_id(set())
        store = cls({key_id: secrets.token_bytes(SECRET_BYTES)}, key_id, p)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyStoreError(f"key store {p} already exists") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot create key store {p}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(store._serialise())
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            p.unlink(missing_ok=True)
            raise
        return store

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyStore:
        """Read the key store file at ``path``.

        Raises :class:`~dicom_wm.errors.KeyStoreError` naming the path when
        the file is missing, unreadable or not a valid key store.
        """
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"key store {p} not found (create one with `dicom-wm keys init`)") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read key store {p}: {exc.strerror or exc}") from None
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeyStoreError(f"key store {p} is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict) or "active" not in doc:
            raise KeyStoreError(f'key store {p} must be an object {{"active": id, "keys": {{id: base64 secret}}}}')
        keys: dict[str, bytes] = {}
        for key_id, encoded in doc["keys"].items():
            _check_key_id(key_id, f"key store {p}")
            try:
                if not isinstance(encoded, str):
                    raise ValueError
                keys[key_id] = base64.b64decode(encoded, validate=True)
            except (ValueError, binascii.Error):
                raise KeyStoreError(f"key store {p}: secret of key {key_id!r} is not valid base64") from None
        if not isinstance(doc["active"], str):
            raise KeyStoreError(f"key store {p}: 'active' must be a key id string")
        return cls(keys, doc["active"], p)

    @classmethod
    def in_memory(cls, keys: dict[str, bytes], active: str) -> KeyStore:
        """A store that lives only in memory (:attr:`path` is ``None``)."""
        return cls(keys, active, None)

    # -- use ------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The backing file, or ``None`` for an in-memory store."""
        return self._path

    @property
    def active_id(self) -> str:
        """The id that signs new embeds."""
        return self._active

    def ids(self) -> list[str]:
        """All key ids, oldest first."""
        return list(self._keys)

    def secret(self, key_id: str) -> bytes:
        """The secret of ``key_id``; :class:`~dicom_wm.errors.KeyStoreError` if unknown."""
        try:
            return self._keys[key_id]
        except (KeyError, TypeError):
            raise KeyStoreError(f"unknown key id {key_id!r}") from None

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def rotate(self) -> str:
        """Add a fresh random key, make it active, save (file-backed stores),
        and return its id. Older keys stay and still verify."""
        key_id = _new_key_id(set(self._keys))
        keys = {**self._keys, key_id: secrets.token_bytes(SECRET_BYTES)}
        previous = (self._keys, self._active)
        self._keys, self._active = keys, key_id
        if self._path is not None:
            try:
                atomic_write_bytes(self._serialise(), self._path, mode=0o600)
            except OSError as exc:
                self._keys, self._active = previous
                raise KeyStoreError(f"cannot write key store {self._path}: {exc.strerror or exc}") from None
        return key_id

    def insecure_permissions(self) -> bool:
        """True when the backing file is readable or writable by group or others."""
        if self._path is None:
            return False
        try:
            return bool(self._path.stat().st_mode & 0o077)
        except OSError:
            return False

    def _serialise(self) -> bytes:
        doc = {
            "active": self._active,
            "keys": {k: base64.b64encode(v).decode("ascii") for k, v in self._keys.items()},
        }
        return (json.dumps(doc, indent=2) + "\n").encode("ascii")

    def __repr__(self) -> str:
        where = str(self._path) if self._path is not None else "in memory"
        return f"KeyStore({where}, active={self._active!r}, ids={self.ids()!r})"
