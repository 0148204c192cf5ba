"""``petvr serve INDEX [INDEX...]``: a FastAPI app over one or more indexes, and a web page.

Each index keeps its own adapter; every adapter trained on the same backbone shares one loaded copy of it (the
adapters' models are built on ``shared_view`` of it, no weights copied). Endpoints (OpenAPI docs at ``/docs``):

- ``GET /search?q=...&k=10&collection=NAME`` (or ``like=VIDEO_ID``: query by an indexed video), ranked hits with
  their time window, best-matching time and the URLs of their video and thumbnail; an empty query is a 422;
- ``POST /search?k=10&collection=NAME`` with an image or a short video clip as the raw request body (its
  ``Content-Type`` ``image/...`` or ``video/...``, at most ``MAX_UPLOAD_BYTES``): query by example, the same answer;
  a file that does not decode is a 422 naming the problem, a wrong type a 415, a larger body a 413;
- ``GET /videos/{id}?collection=NAME``: the file, with HTTP range requests (seeking in the browser's player); only a
  file inside the collection's indexed root is ever served (symlinks resolved); anything else is a 404;
- ``GET /thumbnails/{id}?collection=NAME&t=SECONDS``: a JPEG of the frame at ``t``;
- ``GET /collections``, ``GET /health``;
- ``GET /``: the web page (search box, collection picker, result cards, inline player starting at the hit's time).
"""
from __future__ import annotations

import io
import mimetypes
import tempfile
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path

import av
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, Response

from ..data.video import DataError
from .collection import Collection, open_collection
from .store import STORE_NAME, Store

THUMBNAIL_SIZE = 320
THUMBNAIL_CACHE = 512
MAX_UPLOAD_BYTES = 64 * 2**20  # a query image or clip; anything larger is a 413


def open_collections(indexes: list[str | Path], device: str = "cpu") -> dict[str, Collection]:
    """Open every index, loading each distinct backbone once; names are the indexed folders' names (made unique)."""
    backbones: dict[str, object] = {}
    collections: dict[str, Collection] = {}
    for folder in indexes:
        with Store(Path(folder).expanduser() / STORE_NAME) as store:
            identity = store.get_meta("identity") or {}
        key = identity.get("backbone_hash")
        if key not in backbones:
            backbones[key] = _load_backbone(identity)
        collection = open_collection(folder, backbone=backbones[key], device=device)
        name, number = collection.root.name or "collection", 2
        while name in collections:
            name, number = f"{collection.root.name}-{number}", number + 1
        collection.name = name
        collections[name] = collection
    return collections


def _load_backbone(identity: dict):
    """The plain backbone an index's adapter was trained on, loaded once for every adapter that shares it."""
    from ..adapters import find_adapter_backbone, read_adapter_description
    from ..backbone.checkpoints import load_backbone
    from .retriever import DEFAULT_ADAPTER

    adapter = identity.get("adapter", DEFAULT_ADAPTER)
    if adapter == DEFAULT_ADAPTER:
        return load_backbone(identity.get("backbone"))
    return find_adapter_backbone(read_adapter_description(adapter), adapter)


def read_frame_jpeg(path: Path, time: float, size: int = THUMBNAIL_SIZE) -> bytes:
    """The frame on screen at ``time`` seconds (the last one if ``time`` is past the end), as a JPEG whose long side
    is ``size``."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            start = stream.start_time or 0
            if time > 0:
                container.seek(start + int(time / stream.time_base), stream=stream, backward=True)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.pts is not None and (frame.pts - start) * stream.time_base >= time - 1e-3:
                    break
    except (av.error.FFmpegError, IndexError) as error:
        raise DataError(path, f"cannot read a frame at {time:.2f} s: {error}") from None
    if chosen is None:
        raise DataError(path, f"no frame at {time:.2f} s")
    image = chosen.to_image()
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def create_app(collections: dict[str, Collection]) -> FastAPI:
    if not collections:
        raise ValueError("serve needs at least one index")
    app = FastAPI(title="petvr search", version="1",
                  description="Search your own video collections by text or by example (petvr index / serve).")
    default = next(iter(collections))
    thumbnails: OrderedDict[tuple, bytes] = OrderedDict()
    thumbnail_lock = threading.Lock()

    def collection_named(name: str | None) -> Collection:
        collection = collections.get(name or default)
        if collection is None:
            raise HTTPException(404, f"no collection {name!r}; this server has {', '.join(collections)}")
        return collection

    def video_file(collection: Collection, video_id: int) -> Path:
        path = collection.video_file(video_id)
        if path is None:
            raise HTTPException(404, f"no video {video_id} in collection {collection.name!r}")
        return path

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("petvr.search").joinpath("static", "index.html").read_text()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "collections": {name: len(c) for name, c in collections.items()}}

    @app.get("/collections")
    def list_collections() -> list[dict]:
        return [{"name": name, "videos": len(c), "root": str(c.root), "adapter": c.retriever.adapter,
                 "method": c.retriever.model.method_name, "vector_index": c.kind}
                for name, c in collections.items()]

    @app.get("/search")
    def search(q: str | None = Query(None, max_length=10_000, description="the text query"),
               like: int | None = Query(None, description="query by this indexed video instead of a text"),
               k: int = Query(10, ge=1, le=200), collection: str | None = Query(None)) -> dict:
        chosen = collection_named(collection)
        if like is None and (q is None or not q.strip()):
            raise HTTPException(422, "the query is empty: give q (a text) or like (a video id)")
        try:
            if like is not None:
                result = chosen.search(video=video_file(chosen, like), k=k)
            else:
                result = chosen.search(text=q, k=k)
        except ValueError as error:  # bad input (DataError included): said, never a 500
            raise HTTPException(422, str(error)) from None
        return answer_with_urls(chosen, result)

    @app.post("/search", openapi_extra={"requestBody": {"required": True, "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "video/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_by_example(request: Request, k: int = Query(10, ge=1, le=200),
                                collection: str | None = Query(None)) -> dict:
        """Query by example: the request body is an image or a short video clip (``Content-Type: image/...`` or
        ``video/...``), embedded by the collection's adapter on its video side."""
        chosen = collection_named(collection)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        kind = content_type.split("/")[0]
        if kind not in ("image", "video"):
            raise HTTPException(415, f"send an image/... or video/... body, not {content_type or 'no Content-Type'}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"the query file is over {MAX_UPLOAD_BYTES // 2**20} MB")
        if not body:
            raise HTTPException(422, f"the query {kind} is empty")
        suffix = mimetypes.guess_extension(content_type) or (".jpg" if kind == "image" else ".mp4")
        return await run_in_threadpool(search_uploaded, chosen, body, kind, suffix, k)

    def search_uploaded(chosen: Collection, body: bytearray, kind: str, suffix: str, k: int) -> dict:
        with tempfile.TemporaryDirectory(prefix="petvr-query-") as folder:
            path = Path(folder) / f"query{suffix}"
            path.write_bytes(body)
            try:
                result = chosen.search(k=k, **{kind: path})
            except ValueError as error:  # a file that does not decode: said, naming the upload, never a 500
                raise HTTPException(422, str(error).replace(str(path), f"the uploaded {kind}")) from None
        result.query = f"(uploaded {kind}, {len(body):,} bytes)"
        return answer_with_urls(chosen, result)

    def answer_with_urls(chosen: Collection, result) -> dict:
        """A ``SearchResult`` as JSON, each hit with the URLs of its video and thumbnail instead of its file."""
        answer = result.to_dict()
        answer["collection"] = chosen.name
        for hit in answer["hits"]:
            hit.pop("file")
            hit["video_url"] = f"/videos/{hit['video_id']}?collection={chosen.name}"
            hit["thumbnail_url"] = f"/thumbnails/{hit['video_id']}?collection={chosen.name}&t={hit['time']:.3f}"
        return answer

    @app.get("/videos/{video_id}")
    def video(video_id: int, collection: str | None = None) -> FileResponse:
        path = video_file(collection_named(collection), video_id)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type)

    @app.get("/thumbnails/{video_id}", responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(video_id: int, collection: str | None = None, t: float = Query(0.0, ge=0.0)) -> Response:
        chosen = collection_named(collection)
        path = video_file(chosen, video_id)
        key = (chosen.name, video_id, round(t, 2))
        with thumbnail_lock:
            data = thumbnails.get(key)
        if data is None:
            try:
                data = read_frame_jpeg(path, t)
            except DataError as error:
                raise HTTPException(404, str(error)) from None
            with thumbnail_lock:
                thumbnails[key] = data
                while len(thumbnails) > THUMBNAIL_CACHE:
                    thumbnails.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app


def serve(indexes: list[str | Path], host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    import uvicorn

    collections = open_collections(indexes, device)
    for name, collection in collections.items():
        print(f"collection {name!r}: {len(collection)} videos under {collection.root} ({collection.retriever.adapter})")
    print(f"petvr search on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(create_app(collections), host=host, port=port, log_level="warning")
