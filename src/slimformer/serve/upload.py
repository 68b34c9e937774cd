"""Reading `multipart/form-data` requests (a file upload plus a few text fields) for the routes that take
files: OpenAI's `/v1/audio/transcriptions` and image uploads to `/v1/classify`.

The body is read up to a byte limit first (413 past it, nothing more is read), then parsed by
starlette's multipart parser: parsing a stream we had already capped keeps the limit in one place, and
a malformed form is a 422 naming the body, a missing or empty file a 422 naming its field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .http import HTTPError, short

MAX_FIELDS = 16  # a transcription request has five; more is not a client we know
MAX_FIELD_BYTES = 64 * 1024


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


@dataclass
class Form:
    """The uploaded file's bytes (and the name the client gave it) and the text fields."""

    data: bytes
    filename: str
    fields: dict[str, str]

    def get(self, name: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        """A text field, or 422 naming it when it is not one of `choices`."""
        value = self.fields.get(name, default)
        if value is not None and choices is not None and value not in choices:
            raise HTTPError(422, f"{name!r} must be one of {', '.join(map(repr, choices))}, got {short(value)}", name)
        return value


async def capped_body(request: Request, max_bytes: int) -> bytes:
    """The whole request body; 413 as soon as it passes `max_bytes` (by its declared length or as read)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"request body is {int(declared)} bytes; at most {max_bytes}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"request body exceeds {max_bytes} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, max_bytes: int, file_field: str = "file") -> Form:
    """The form of a multipart request with exactly one file in `file_field`; 422 otherwise."""
    if not is_multipart(request):
        raise HTTPError(422, f"this route takes multipart/form-data with the upload in {file_field!r}, got "
                             f"content-type {short(request.headers.get('content-type', ''))}", "body")
    body = await capped_body(request, max_bytes)

    async def once() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, once(), max_files=4, max_fields=MAX_FIELDS,
                             max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise HTTPError(422, f"request body is not a valid multipart form: {e}", "body") from None
    try:
        upload = form.get(file_field)
        if not isinstance(upload, UploadFile):
            raise HTTPError(422, f"{file_field!r} is required: upload the file as a form part named "
                                 f"{file_field!r} (e.g. curl -F {file_field}=@name)", file_field)
        data = await upload.read()
        if not data:
            raise HTTPError(422, f"{file_field!r} is empty (0 bytes)", file_field)
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return Form(data, upload.filename or "", fields)
    finally:
        await form.close()
