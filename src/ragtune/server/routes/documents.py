"""Documents of a collection: upload (an asynchronous ingest job), list, show, delete.

Every read applies the caller's groups: a document whose ACL shares no group with the caller is
neither listed nor shown, and cannot be deleted (404 as if absent). A non-admin caller may only give
uploads an ACL made of its own groups. Whether an upload may replace a stored document is decided
when the job writes it, with the row locked (``store.access``): an upload without ``acl`` keeps the
stored documents' ACL, one with a different ACL needs ``change_acl=true``, and a refused file is
reported in the job with a reason that is the same whether or not the name belongs to a document the
caller cannot read.
"""

from __future__ import annotations

import json
import shutil
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from ragtune.errors import JobLimitError, PermissionDeniedError, QueryError
from ragtune.models import Document, Principal
from ragtune.server.auth import check_groups, parse_list
from ragtune.server.deps import Ingester, Reader, State
from ragtune.server.guards import json_problem
from ragtune.server.routes.ingest import wait_for
from ragtune.server.uploads import Upload, receive_upload

router = APIRouter(prefix="/collections/{collection}/documents", tags=["documents"])

DocId = Annotated[int, Path(ge=1, le=2**63 - 1)]

_UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "One part per file; the file name becomes the document URI."},
        "acl": {"type": "string", "description": "Comma-separated groups allowed to read (empty: public). Not sent: "
                                                 "stored documents keep their ACL, new ones are public."},
        "change_acl": {"type": "string", "enum": ["true", "false"],
                       "description": "Allow the upload to change the ACL of documents already stored."},
        "metadata": {"type": "string", "description": "A JSON object stored with every document. Not sent: stored "
                                                      "documents keep theirs."},
    }}}}}}


def _doc(document: Document) -> dict[str, Any]:
    return {**document.__dict__, "acl": list(document.acl)}


@router.get("", summary="List the documents the caller may read")
def list_documents(collection: str, state: State, caller: Reader,
                   prefix: Annotated[str | None, Query(max_length=1000)] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> list[dict[str, Any]]:
    state.engine.visible_collection(collection, caller.principal)
    return [_doc(d) for d in state.engine.documents(collection=collection, prefix=prefix, limit=limit, offset=offset,
                                                    principal=caller.principal)]


@router.get("/{doc_id}", summary="Show a document with its chunks (and its text with text=true)")
def get_document(collection: str, doc_id: DocId, state: State, caller: Reader,
                 text: Annotated[bool, Query()] = False) -> dict[str, Any]:
    document, body, chunks = state.engine.document(collection=collection, document_id=doc_id,
                                                   principal=caller.principal)
    out = _doc(document)
    out["chunks"] = [{"id": c.id, "ordinal": c.ordinal, "start": c.start, "end": c.end, "heading": c.heading,
                      "tokens": c.tokens, "text": c.text} for c in chunks]
    if text:
        out["text"] = body
    return out


@router.delete("/{doc_id}", status_code=204, summary="Delete a document (ingest scope)")
def delete_document(collection: str, doc_id: DocId, state: State, caller: Ingester) -> Response:
    document, _, _ = state.engine.document(collection=collection, document_id=doc_id, principal=caller.principal)
    state.engine.delete([document.uri], collection=collection, principal=caller.principal)
    return Response(status_code=204)


@router.post("", status_code=202, openapi_extra=_UPLOAD_BODY,
             summary="Upload files (multipart, streamed to disk); they are ingested by an asynchronous job")
async def upload_documents(collection: str, request: Request, state: State, caller: Ingester,
                           wait: Annotated[float, Query(ge=0, le=60, description="Seconds to wait for the job")] = 0
                           ) -> JSONResponse:
    from anyio import to_thread

    if not caller.principal.admin:
        await to_thread.run_sync(state.engine.collection, collection)  # only an admin creates collections
    settings = state.settings
    # before a byte of the upload is stored; create() counts again under a lock
    try:
        await to_thread.run_sync(state.jobs.check_quota, caller.principal.id, settings.server.max_jobs_per_key)
    except JobLimitError:
        await _discard_body(request)
        raise
    upload = await receive_upload(request, state.uploads, max_bytes=settings.server.max_upload_bytes,
                                  max_file_bytes=settings.ingest.max_file_bytes,
                                  max_files=settings.server.max_upload_files)
    try:
        acl, metadata, change_acl = _form(upload, caller.principal)
        job = await to_thread.run_sync(lambda: state.jobs.create(
            collection=collection, principal=caller.principal, acl=acl, metadata=metadata, folder=upload.folder,
            files=upload.files, change_acl=change_acl, max_per_key=settings.server.max_jobs_per_key))
    except BaseException:
        shutil.rmtree(upload.folder, ignore_errors=True)
        raise
    state.worker.wake()
    if wait:
        job = await wait_for(state, job.id, caller.principal, wait)
    return JSONResponse(job.public(), status_code=202 if not job.done else 200,
                        headers={"Location": f"/ingest-jobs/{job.id}"})


_DRAIN_BYTES = 1024 * 1024


async def _discard_body(request: Request) -> None:
    """Read (and drop) up to 1 MiB of a body we refuse before storing it: answering while the client
    still sends makes the server close the connection under it, and the client sees a reset instead
    of the refusal. A larger body is cut off all the same (the refusal saves receiving it)."""
    read = 0
    async for chunk in request.stream():
        read += len(chunk)
        if read > _DRAIN_BYTES:
            break


def _form(upload: Upload, principal: Principal) -> tuple[tuple[str, ...] | None, dict[str, Any] | None, bool]:
    """The upload's ACL and metadata (None when the form does not send them) and ``change_acl``."""
    acl = check_groups(parse_list(upload.field("acl"))) if upload.field("acl") else None
    if acl is not None and not principal.admin and not set(acl) <= principal.groups:
        outside = sorted(set(acl) - principal.groups)
        raise PermissionDeniedError(f"an upload's ACL may only name the key's own groups; not {outside}")
    change = [v.strip().lower() for v in upload.field("change_acl")]
    if any(v not in ("true", "false", "1", "0", "") for v in change):
        raise QueryError(f"change_acl must be true or false, got {change!r}")
    metadata: dict[str, Any] | None = None
    for raw in upload.field("metadata"):
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise QueryError(f"metadata must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise QueryError(f"metadata must be a JSON object, got {type(value).__name__}")
        problem = json_problem(value, "metadata")
        if problem is not None:
            raise QueryError(f"the upload's {problem}")
        metadata = {**(metadata or {}), **value}
    return acl, metadata, any(v in ("true", "1") for v in change)
