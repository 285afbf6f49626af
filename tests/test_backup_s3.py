"""S3-compatible destinations against moto's real S3 API server on loopback."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ktlo.store import audit
from ktlo.store.models import utcnow
from tasks.backup import store
from tasks.backup.kinds.directory import (
    DirectoryBackupInput,
    DirectoryRestoreInput,
    backup_directory,
    restore_directory,
)
from tasks.backup.model import BackupError, DestinationSpec
from tasks.backup.prune import PruneInput, prune
from tasks.backup.store import Backup
from tasks.backup.stream import Job
from tasks.backup.verify import VerifyInput, verify_backup
from tests.backup_helpers import S3, make_tree, s3_server, snapshot_tree, unlock
from tests.conftest import Home

KEY = "s3-test-key-93be1f0d77"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    with s3_server(monkeypatch) as server:
        yield server


def _spec(s3: S3, **extra: Any) -> DestinationSpec:
    return DestinationSpec(url=f"s3://{s3.bucket}/nightly", endpoint_url=s3.endpoint, **extra)


def _keys(s3: S3) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=s3.bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_round_trip_through_s3(
    home: Home, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTLO_SECRET_S3_KEY", KEY)
    monkeypatch.setenv("KTLO_SECRET_S3_ID", "testing")
    monkeypatch.setenv("KTLO_SECRET_S3_SECRET", "testing-secret-value")
    tree = make_tree(tmp_path / "src", big_bytes=40 << 20)  # > one 16 MiB part: multipart
    spec = _spec(
        s3,
        key_secret="s3-key",
        access_key_id_secret="s3-id",
        secret_access_key_secret="s3-secret",
    )
    entry = backup_directory(DirectoryBackupInput(path=str(tree), destination=spec), Job()).entry
    assert entry.location.startswith(f"s3://{s3.bucket}/nightly/")
    assert entry.destination["endpoint_url"] == s3.endpoint
    assert "testing-secret-value" not in json.dumps(entry.destination)
    assert _keys(s3) == sorted(
        [entry.key and f"nightly/{entry.key}", f"nightly/{entry.key}.manifest.json"]
    )
    manifest = json.loads(
        s3.client()
        .get_object(Bucket=s3.bucket, Key=f"nightly/{entry.key}.manifest.json")["Body"]
        .read()
    )
    assert manifest["sha256"] == entry.sha256
    assert manifest["encryption"]["algorithm"] == "aes-256-gcm-stream"
    assert KEY not in json.dumps(manifest)
    assert s3.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []

    assert verify_backup(VerifyInput(backup_id=entry.id, deep=True), Job()).checks["files"] > 10
    target = tmp_path / "restored"
    restore_directory(DirectoryRestoreInput(backup_id=entry.id, target=str(target)), Job())
    assert snapshot_tree(target) == snapshot_tree(tree)
    unlock(tmp_path)

    # a flipped byte in the bucket is caught
    body = bytearray(
        s3.client().get_object(Bucket=s3.bucket, Key=f"nightly/{entry.key}")["Body"].read()
    )
    body[1000] ^= 0xFF
    s3.client().put_object(Bucket=s3.bucket, Key=f"nightly/{entry.key}", Body=bytes(body))
    with pytest.raises(BackupError, match=entry.id):
        verify_backup(VerifyInput(backup_id=entry.id), Job())


def test_prune_deletes_objects_and_manifests(home: Home, s3: S3, tmp_path: Path) -> None:
    src = tmp_path / "small"
    src.mkdir()
    (src / "f").write_text("x")
    ids = [
        backup_directory(DirectoryBackupInput(path=str(src), destination=_spec(s3)), Job()).entry.id
        for _ in range(3)
    ]
    assert len(_keys(s3)) == 6
    verify_backup(VerifyInput(backup_id=ids[0]), Job())  # the oldest is the only verified one
    out = prune(PruneInput(source=f"directory:{src}", keep_last=1))
    assert out.removed == [ids[1]]
    assert sorted(out.kept) == sorted([ids[2], ids[0]])
    remaining = _keys(s3)
    assert len(remaining) == 4
    assert not any(ids[1] in k for k in remaining)


def test_interrupted_upload_is_cleaned_up_by_the_next_run(
    home: Home, s3: S3, tmp_path: Path
) -> None:
    """A writer that died mid-upload leaves an incomplete multipart upload and a `writing`
    entry; the next backup to that destination aborts the upload and fails the entry."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    spec = _spec(s3)
    key = "nightly/directory-dead/20240101T000000Z-deadbeef.tar.zst"
    upload = s3.client().create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    s3.client().upload_part(
        Bucket=s3.bucket, Key=key, UploadId=upload, PartNumber=1, Body=os.urandom(6 << 20)
    )
    store.add(
        Backup(
            id="20240101T000000Z-deadbeef",
            source="dead",
            kind="directory",
            destination=json.loads(spec.model_dump_json(exclude_none=True)),
            location=f"s3://{s3.bucket}/{key}",
            key="directory-dead/20240101T000000Z-deadbeef.tar.zst",
            owner=f"{socket.gethostname()}|999999999|1",  # no such process
            heartbeat_at=utcnow(),
            upload_id=upload,
        )
    )
    backup_directory(DirectoryBackupInput(path=str(src), destination=spec), Job())
    dead = store.get("20240101T000000Z-deadbeef")
    assert dead is not None
    assert dead.status == "failed"
    assert s3.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []) == []
    assert not any("deadbeef" in k for k in _keys(s3))
    assert any(e.action == "backup.interrupted" for e in audit.events())


def test_unreachable_endpoint_fails_cleanly(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    spec = DestinationSpec(
        url="s3://nowhere/x", endpoint_url="http://127.0.0.1:1", region="us-east-1"
    )
    with pytest.raises(BackupError, match="s3://nowhere"):
        backup_directory(DirectoryBackupInput(path=str(src), destination=spec), Job())
    assert store.entries() == []


def test_s3_destination_in_a_runbook(home: Home, run: Any, s3: S3, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello")
    path = home.runbook(
        "s3",
        f"""
        name: s3
        steps:
          - id: backup
            uses: backup.directory
            with:
              path: "{src}"
              destination: {{url: "s3://{s3.bucket}/rb", endpoint_url: "{s3.endpoint}"}}
          - id: verify
            uses: backup.verify
            with: {{backup_id: "{{{{ steps.backup.output.backup_id }}}}"}}
        """,
    )
    result = run(path)
    assert result.status == "succeeded", {k: s.error for k, s in result.steps.items()}
    assert result.steps["backup"].output["location"].startswith(f"s3://{s3.bucket}/rb/")
