"""The destinations table and its CLI, C-GET requester policies, and the
audit / studies commands' argument handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_wm.audit import list_events, parse_since
from dicom_wm.cli.app import app
from dicom_wm.db import EgressPolicy, get_sessionmaker, migrate
from dicom_wm.retrieve import add_destination, check_ae_title, list_destinations, remove_destination, requester_policy

runner = CliRunner()


def _run(data_dir: Path, *args: str):
    return runner.invoke(app, [*args, "--data-dir", str(data_dir)], catch_exceptions=False)


def test_cli_add_change_list_remove(tmp_path: Path) -> None:
    out = _run(tmp_path, "destinations", "add", "VIEWER1", "10.0.0.5", "104")
    assert out.exit_code == 0 and "added VIEWER1 10.0.0.5:104 policy watermarked" in out.output
    out = _run(tmp_path, "destinations", "add", " PACS2 ", "pacs2.example", "11112", "--policy", "original", "--json")
    assert out.exit_code == 0
    assert json.loads(out.output) == {"ae_title": "PACS2", "host": "pacs2.example", "port": 11112,
                                      "policy": "original", "created": True}
    out = _run(tmp_path, "destinations", "add", "VIEWER1", "10.0.0.6", "4242", "--policy", "original")
    assert out.exit_code == 0 and out.output.startswith("changed VIEWER1")
    out = _run(tmp_path, "destinations", "list", "--json")
    assert json.loads(out.output) == [
        {"ae_title": "PACS2", "host": "pacs2.example", "policy": "original", "port": 11112},
        {"ae_title": "VIEWER1", "host": "10.0.0.6", "policy": "original", "port": 4242},
    ]
    out = _run(tmp_path, "destinations", "list")
    assert out.exit_code == 0 and "VIEWER1" in out.output and "pacs2.example" in out.output
    assert _run(tmp_path, "destinations", "remove", "VIEWER1").exit_code == 0
    out = _run(tmp_path, "destinations", "remove", "VIEWER1")
    assert out.exit_code == 1 and "no destination 'VIEWER1'" in out.output

    out = _run(tmp_path, "audit", "--json", "--kind", "destination")
    events = [json.loads(line) for line in out.output.splitlines()]
    assert [e["details"]["action"] for e in events] == ["added", "added", "changed", "removed"]
    assert events[2]["details"]["before"]["host"] == "10.0.0.5" and events[2]["actor"]


@pytest.mark.parametrize(("args", "message"), [
    (("BAD\\AE", "h", "104"), "AE title"),
    (("THIS-TITLE-IS-TOO-LONG", "h", "104"), "AE title"),
    (("AE", "bad host!", "104"), "host"),
    (("AE", "h", "70000"), "port"),
    (("AE", "h", "104", "--policy", "trusted"), "policy 'trusted' must be one of watermarked, original"),
])
def test_cli_refuses_bad_values(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = _run(tmp_path, "destinations", "add", *args)
    assert out.exit_code == 2 and message in out.output
    assert json.loads(_run(tmp_path, "destinations", "list", "--json").output) == []


def test_audit_and_studies_arguments(tmp_path: Path) -> None:
    out = _run(tmp_path, "audit", "--since", "yesterday")
    assert out.exit_code == 2 and "ISO 8601" in out.output
    out = _run(tmp_path, "audit", "--kind", "nope")
    assert out.exit_code == 2 and "tamper_detected" in out.output
    assert _run(tmp_path, "db", "upgrade").exit_code == 0
    out = _run(tmp_path, "studies", "--json")
    assert out.exit_code == 0 and out.output == ""
    assert parse_since("2026-11-28").isoformat() == "2026-11-28T00:00:00+00:00"
    assert parse_since("2026-11-28T10:00:00+01:00").isoformat() == "2026-11-28T09:00:00+00:00"


def test_requester_policy_needs_the_registered_host_for_original(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    migrate.upgrade(url)
    sessions = get_sessionmaker(url)
    add_destination(sessions, "WS1", "127.0.0.1", 104, "original", actor="test")
    add_destination(sessions, "WS2", "localhost", 104, "original", actor="test")
    add_destination(sessions, "WS3", "127.0.0.1", 104, "watermarked", actor="test")
    with sessions() as s:
        assert requester_policy(s, "NOBODY", "127.0.0.1") == (EgressPolicy.WATERMARKED, None)
        assert requester_policy(s, "WS1", "127.0.0.1") == (EgressPolicy.ORIGINAL, None)
        assert requester_policy(s, "WS2", "127.0.0.1") == (EgressPolicy.ORIGINAL, None)
        assert requester_policy(s, "WS3", "127.0.0.1") == (EgressPolicy.WATERMARKED, None)
        policy, note = requester_policy(s, "WS1", "192.0.2.9")
        assert policy is EgressPolicy.WATERMARKED and "192.0.2.9" in note and "127.0.0.1" in note
    assert [d.ae_title for d in list_destinations(sessions)] == ["WS1", "WS2", "WS3"]
    assert remove_destination(sessions, "WS2", actor="test").host == "localhost"
    assert remove_destination(sessions, "WS2", actor="test") is None
    assert len(list_events(sessions, kind="destination")) == 4


def test_ae_titles() -> None:
    assert check_ae_title("  PACS  ") == "PACS"
    for bad in ("", "   ", "A" * 17, "BAD\\AE", "TAB\tAE", "ÄE"):
        with pytest.raises(ValueError, match="AE title"):
            check_ae_title(bad)
