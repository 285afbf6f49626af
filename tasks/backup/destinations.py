"""Where backup objects live: the local filesystem and S3-compatible object storage.

Both publish an object atomically. Locally the bytes go to a hidden `.ID….partial` file that
the writer holds an exclusive `flock` on; `commit` fsyncs it, renames it to its final name and
fsyncs the directory. On S3 the bytes go to a multipart upload, which is invisible until
`CompleteMultipartUpload` (small objects: one `PutObject` at commit). Either way a writer that
dies leaves only a partial (a `.partial` file whose lock is free, or an incomplete upload),
never an object under its final name, and `sweep_partials` removes those leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

from ktlo import secrets
from ktlo.processes import lock_is_free
from ktlo.settings import get_settings
from tasks.backup.model import BackupError, DestinationSpec, Manifest

MANIFEST_SUFFIX = ".manifest.json"
PARTIAL_SUFFIX = ".partial"


class DestinationError(BackupError):
    pass


class Writer(Protocol):
    upload_id: str | None

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Destination(Protocol):
    spec: DestinationSpec

    def location(self, key: str) -> str: ...
    def open_writer(self, key: str) -> Writer: ...
    def open_reader(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int | None: ...
    def delete(self, key: str) -> None: ...
    def put_manifest(self, key: str, manifest: Manifest) -> None: ...
    def get_manifest(self, key: str) -> Manifest | None: ...
    def sweep_partials(self, keep: set[str], dead_uploads: set[str]) -> list[str]: ...


def _os_error(action: str, where: str, exc: OSError) -> DestinationError:
    if exc.errno == errno.ENOSPC:
        reason = "destination is full (no space left on device)"
    elif exc.errno == errno.EDQUOT:
        reason = "disk quota exceeded"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = f"destination is not writable ({exc.strerror})"
    else:
        reason = exc.strerror or type(exc).__name__
    return DestinationError(f"{action} {where}: {reason}")


class LocalWriter:
    upload_id: str | None = None

    def __init__(self, final: Path):
        self.final = final
        self.partial = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _os_error("cannot create", str(self.partial), exc) from None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if we die
        self._file = os.fdopen(fd, "wb", buffering=0)

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise _os_error("cannot write", str(self.partial), exc) from None

    def commit(self) -> None:
        try:
            os.fsync(self._file.fileno())
            os.rename(self.partial, self.final)
            dir_fd = os.open(self.final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise _os_error("cannot commit", str(self.final), exc) from None
        finally:
            self._file.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.partial.unlink()


class LocalDestination:
    def __init__(self, spec: DestinationSpec):
        self.spec = spec
        url = spec.url or str(get_settings().home_dir / "backups")
        self.root = Path(urlparse(url).path if url.startswith("file://") else url).expanduser()
        self.root = self.root.absolute()
        self.spec = spec.model_copy(update={"url": str(self.root)})

    def path(self, key: str) -> Path:
        return self.root / key

    def location(self, key: str) -> str:
        return str(self.path(key))

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(self.path(key))

    def open_reader(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise DestinationError(f"object {self.path(key)} does not exist") from None
        except OSError as exc:
            raise _os_error("cannot read", str(self.path(key)), exc) from None

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        for path in (self.path(key), self.path(key + MANIFEST_SUFFIX)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def put_manifest(self, key: str, manifest: Manifest) -> None:
        writer = self.open_writer(key + MANIFEST_SUFFIX)
        try:
            writer.write(manifest.model_dump_json(indent=2).encode())
            writer.commit()
        except BaseException:
            writer.abort()
            raise

    def get_manifest(self, key: str) -> Manifest | None:
        try:
            return Manifest.model_validate_json(self.path(key + MANIFEST_SUFFIX).read_bytes())
        except FileNotFoundError:
            return None

    def sweep_partials(self, keep: set[str], dead_uploads: set[str]) -> list[str]:
        """Delete `.partial` files nobody holds the lock on (their writer is gone)."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for partial in self.root.glob(f"*/.*{PARTIAL_SUFFIX}"):
            key = f"{partial.parent.name}/{partial.name[1 : -len(PARTIAL_SUFFIX)]}"
            if key in keep or key.removesuffix(MANIFEST_SUFFIX) in keep:
                continue
            if lock_is_free(partial):
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
                removed.append(str(partial))
        return removed


# -- S3 ------------------------------------------------------------------------------------

PART_SIZE = 16 << 20  # S3 needs ≥ 5 MiB per part except the last
ORPHAN_AGE = timedelta(hours=1)


class S3Writer:
    """Buffers up to one part; objects smaller than a part are sent with one PutObject."""

    def __init__(self, dest: S3Destination, key: str):
        self.dest, self.key = dest, dest.full_key(key)
        self.upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._buffer = bytearray()

    def _start(self) -> None:
        self.upload_id = self.dest.call(
            "start the upload of", self.key, "create_multipart_upload", Key=self.key
        )["UploadId"]
        if self.dest.on_upload_started is not None:
            self.dest.on_upload_started(self.upload_id)

    def _flush_part(self) -> None:
        if self.upload_id is None:
            self._start()
        number = len(self._parts) + 1
        response = self.dest.call(
            "upload to",
            self.key,
            "upload_part",
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._buffer.clear()

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= PART_SIZE:
            self._flush_part()

    def commit(self) -> None:
        if self.upload_id is None:
            self.dest.call("upload", self.key, "put_object", Key=self.key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._flush_part()
        self.dest.call(
            "complete the upload of",
            self.key,
            "complete_multipart_upload",
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        if self.upload_id is not None:
            with contextlib.suppress(Exception):
                self.dest.client.abort_multipart_upload(
                    Bucket=self.dest.bucket, Key=self.key, UploadId=self.upload_id
                )


class S3Destination:
    def __init__(self, spec: DestinationSpec):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise DestinationError(
                "S3 destinations need boto3: install ktlo with the 's3' extra"
            ) from None
        assert spec.url is not None
        parsed = urlparse(spec.url)
        if not parsed.netloc:
            raise DestinationError(f"S3 destination {spec.url!r} has no bucket")
        self.spec = spec
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        credentials: dict[str, str] = {}
        if spec.access_key_id_secret and spec.secret_access_key_secret:
            credentials = {
                "aws_access_key_id": secrets.resolve(spec.access_key_id_secret),
                "aws_secret_access_key": secrets.resolve(spec.secret_access_key_secret),
            }
        self.client = boto3.client(
            "s3",
            endpoint_url=spec.endpoint_url,
            region_name=spec.region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
            **credentials,
        )
        self.on_upload_started: Any = None

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def call(self, action: str, key: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise DestinationError(
                f"cannot {action} s3://{self.bucket}/{key}: {error.get('Code', '?')}: "
                f"{error.get('Message', '')}".rstrip(": ")
            ) from None
        except BotoCoreError as exc:
            raise DestinationError(
                f"cannot {action} s3://{self.bucket}/{key}: {secrets.redact(str(exc))}"
            ) from None

    def open_writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        full = self.full_key(key)
        body: BinaryIO = self.call("read", full, "get_object", Key=full)["Body"]
        return body

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError:
            return None
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        for full in (self.full_key(key), self.full_key(key + MANIFEST_SUFFIX)):
            self.call("delete", full, "delete_object", Key=full)

    def put_manifest(self, key: str, manifest: Manifest) -> None:
        full = self.full_key(key + MANIFEST_SUFFIX)
        body = manifest.model_dump_json(indent=2).encode()
        self.call("write", full, "put_object", Key=full, Body=body)

    def get_manifest(self, key: str) -> Manifest | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(
                Bucket=self.bucket, Key=self.full_key(key + MANIFEST_SUFFIX)
            )
        except ClientError:
            return None
        return Manifest.model_validate_json(obj["Body"].read())

    def _uploads(self) -> Iterator[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                yield from page.get("Uploads", [])
        except (BotoCoreError, ClientError) as exc:
            raise DestinationError(
                f"cannot list uploads in s3://{self.bucket}/{self.prefix}: "
                f"{secrets.redact(str(exc))}"
            ) from None

    def sweep_partials(self, keep: set[str], dead_uploads: set[str]) -> list[str]:
        """Abort uploads of dead writers, and unknown ones older than an hour."""
        removed: list[str] = []
        cutoff = datetime.now(UTC) - ORPHAN_AGE
        live = {self.full_key(k) for k in keep}
        for upload in self._uploads():
            if upload["Key"] in live and upload["UploadId"] not in dead_uploads:
                continue
            if upload["UploadId"] in dead_uploads or upload["Initiated"] < cutoff:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                removed.append(f"s3://{self.bucket}/{upload['Key']} (upload {upload['UploadId']})")
        return removed


def open_destination(spec: DestinationSpec) -> Destination:
    url = spec.url or ""
    if url.startswith("s3://"):
        return S3Destination(spec)
    if "://" in url and not url.startswith("file://"):
        raise DestinationError(f"unsupported destination {url!r}: use a path, file:// or s3://")
    return LocalDestination(spec)


def stored_spec(dest: Destination) -> dict[str, Any]:
    """The destination as the catalog keeps it (secret names only)."""
    return json.loads(dest.spec.model_dump_json(exclude_none=True))
