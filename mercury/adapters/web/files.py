"""The web chat's file store: uploads and reply files, one folder per file.

A file lives at `<root>/<32 hex id>/<safe name>` and is served at
`/api/chat/files/<id>/<name>`. Only paths exactly one folder below the root are ever
read back, so neither a crafted URL nor an attachment ref can reach another file. Images
a browser may show are served inline; anything else (HTML, SVG, ...) is a download, so an
uploaded file can never run script on the dashboard's origin.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, MultipartReader, web

from mercury.core.messages import Attachment

FILE_ID_RE = re.compile(r"[0-9a-f]{32}")
_INLINE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".gif": "image/gif", ".webp": "image/webp"}  # fmt: skip


def safe_name(name: str | None) -> str:
    """A file name that is safe as one path component and in a URL."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._ ()+-]", "_", base).strip(" .")
    return cleaned[:128] or "file"


def file_meta(path: Path) -> dict[str, str]:
    """How a stored file appears in a message: its name and its URL."""
    return {"name": path.name, "url": f"/api/chat/files/{path.parent.name}/{quote(path.name)}"}


class FileStore:
    """The folder of stored files (`data_dir/webchat`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def new_folder(self) -> Path:
        """A fresh, empty folder for one file."""
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def copy_in(self, source: Path, name: str) -> dict[str, str]:
        """Store a copy of `source` (a reply's file) and return its meta."""
        target = self.new_folder() / safe_name(name)
        shutil.copyfile(source, target)
        return file_meta(target)

    def resolve(self, ref: str | None) -> Path | None:
        """The stored file behind `ref`, only if it is inside the file store."""
        if not ref:
            return None
        root = self.root.resolve()
        path = Path(ref).resolve()
        if path.parent.parent != root or not path.is_file():
            return None
        return path

    def lookup(self, file_id: str, name: str) -> Path | None:
        """The stored file a URL's `<id>/<name>` names, if that is a well-formed pair."""
        if FILE_ID_RE.fullmatch(file_id) and safe_name(name) == name:
            return self.resolve(str(self.root / file_id / name))
        return None


class UploadRefused(Exception):
    """The upload is not accepted: answer `status` with `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def too_large(max_upload: int) -> UploadRefused:
    return UploadRefused(
        413, f"upload too large: the limit is {max_upload} bytes (adapters.web.max_upload)"
    )


@dataclass
class Upload:
    """A multipart post read to the end: its text fields and the files now stored."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[Attachment] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        """Remove the stored files (the message they came with was not accepted)."""
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders.clear()


async def read_upload(
    reader: MultipartReader, store: FileStore, *, max_upload: int, max_field: int
) -> Upload:
    """Stream every part of a multipart post: fields into memory, files into `store`.

    Stops at `max_upload` bytes of files in total (never buffering a huge upload) and at
    `max_field` bytes in a text field; on any refusal or error the files already stored
    are removed before it raises.
    """
    upload = Upload()
    total = 0
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise UploadRefused(400, "nested multipart is not supported")
            if part.filename is None:
                value = b""
                while chunk := await part.read_chunk(65536):
                    value += chunk
                    if len(value) > max_field:
                        raise UploadRefused(400, f"{part.name}: field too long")
                upload.fields[part.name or ""] = value.decode("utf-8", "replace")
                continue
            # Some clients (aiohttp among them) percent-encode the multipart filename.
            name = safe_name(unquote(part.filename))
            folder = store.new_folder()
            upload.folders.append(folder)
            size = 0
            with (folder / name).open("wb") as fh:
                while chunk := await part.read_chunk(65536):
                    size += len(chunk)
                    total += len(chunk)
                    if total > max_upload:
                        raise too_large(max_upload)
                    fh.write(chunk)
            ctype = part.headers.get("Content-Type") or "application/octet-stream"
            upload.files.append(Attachment(name, size, ctype, str(folder / name)))
    except BaseException:
        upload.discard()
        raise
    return upload


def file_response(path: Path, name: str) -> web.FileResponse:
    """Serve a stored file: images inline, anything else as a sandboxed download."""
    inline = _INLINE_TYPES.get(path.suffix.lower())
    disposition = "inline" if inline else "attachment"
    return web.FileResponse(
        path,
        headers={
            "Content-Type": inline or "application/octet-stream",
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name)}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )
