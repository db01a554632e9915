"""S3 and S3-compatible storage (MinIO, Ceph, R2...) as a document source: ``s3://bucket/prefix``.

The endpoint and the credentials are boto3's own, from the environment or the AWS config files:
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``), ``AWS_DEFAULT_REGION``, and
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for a store other than AWS; nothing of them is
stored or logged by ragtune. Python callers may pass a ready ``client`` instead.

The prefix is matched as S3 matches it, as a string: ``s3://docs/hr`` lists ``hr/leave.md`` and
``hr-old/x.md``; write ``s3://docs/hr/`` for the folder alone. Keys ending in ``/`` (the folder
markers some consoles create) are skipped. boto3 comes with the s3 extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ragtune.errors import ConfigError, IngestError, NotFoundError
from ragtune.extras import needs
from ragtune.ingest.connectors.base import RemoteObject

SCHEME = "s3://"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix); ``ConfigError`` naming the URI otherwise."""
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        raise ConfigError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[len(SCHEME):].partition("/")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-" for c in bucket) or bucket != bucket.lower():
        raise ConfigError(f"invalid bucket name {bucket!r} in {uri!r}: 3 to 63 lower-case letters, digits, '.' or '-'")
    return bucket, prefix


class S3Connector:
    """The objects of ``s3://bucket/prefix``, listed page by page, each downloaded on ``read``."""

    def __init__(self, uri: str, *, client: Any = None, endpoint_url: str | None = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = uri
        self._client = client
        self._endpoint_url = endpoint_url

    @property
    def client(self) -> Any:
        if self._client is None:
            with needs("s3", "reading s3:// sources", error=ConfigError):
                import boto3
            self._client = boto3.session.Session().client("s3", endpoint_url=self._endpoint_url)
        return self._client

    def list(self) -> Iterator[RemoteObject]:
        """Every object under the prefix, in key order. The first page is asked for before anything
        is yielded, so a missing bucket or refused credentials raise here, naming the bucket."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        iterator = iter(pages)
        try:
            first = next(iterator, None)
        except Exception as exc:
            raise self._listing_error(exc) from exc
        return self._objects(first, iterator)

    def _objects(self, first: dict[str, Any] | None, pages: Iterator[dict[str, Any]]) -> Iterator[RemoteObject]:
        page = first
        while page is not None:
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue
                modified = item.get("LastModified")
                yield RemoteObject(uri=f"{SCHEME}{self.bucket}/{key}", etag=str(item.get("ETag", "")).strip('"'),
                                   size=int(item.get("Size", 0)),
                                   modified=modified.isoformat() if modified is not None else None,
                                   read=self._reader(key))
            try:
                page = next(pages, None)
            except Exception as exc:
                raise self._listing_error(exc) from exc

    def _reader(self, key: str) -> Any:
        def read() -> bytes:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                body: bytes = response["Body"].read()
            except Exception as exc:
                raise IngestError(f"{SCHEME}{self.bucket}/{key}", f"cannot download: {_describe(exc)}") from exc
            return body

        return read

    def _listing_error(self, exc: Exception) -> Exception:
        code = _code(exc)
        where = f"s3://{self.bucket}/{self.prefix}"
        if code in ("NoSuchBucket", "404", "NotFound"):
            return NotFoundError(f"no bucket named {self.bucket!r} ({where}): check the name and the endpoint "
                                 "(AWS_ENDPOINT_URL)")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
            return IngestError(where, f"the store refused to list bucket {self.bucket!r} with these credentials: "
                                      f"{_describe(exc)}")
        return IngestError(where, f"cannot list bucket {self.bucket!r}: {_describe(exc)}")


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _describe(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def s3_connector(uri: str, settings: Any = None) -> S3Connector:
    """The plugin factory of the ``s3`` scheme: the environment's endpoint and credentials."""
    return S3Connector(uri)
