"""The FastAPI app: episode list, episode page, transcript downloads, audio, uploads.

Plain server-rendered HTML (Jinja2, autoescaped) with one small script for progress
polling, timestamp seeking and the upload's automatic download. Pages read the
storage root directly; Dagster is reached only through :class:`DagsterClient`
(GraphQL over HTTP), and a request never waits for a run: launching queues it,
and the page polls ``/api/episodes/{key}`` for progress.

Routes::

    GET  /                                   episodes, ?q= title search, ?status=, ?page=
    GET  /episodes/{key}                     transcript with seekable timestamps, run progress
    GET  /episodes/{key}/audio               stored audio, HTTP Range (seeking)
    GET  /episodes/{key}/transcript.{fmt}    download: md, json, srt, vtt
    POST /episodes/{key}/transcribe          launch the episode_pipeline run of the partition
    GET  /api/episodes/{key}                 status + progress JSON (polled by the pages)
    GET  /upload, POST /upload               upload audio → up-<hash> partition → run → download
    GET  /healthz                            storage and Dagster reachability
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from resources.storage import StorageError, StorageResource
from twiml_assets.audio.uploads import (
    SidecarIndex,
    UploadError,
    format_size,
    register_upload,
    stage_upload,
)
from twiml_assets.feed.source import EpisodeInfo
from twiml_assets.keys import is_upload_key, is_valid_key
from twiml_assets.web.dagster_client import DagsterClient, DagsterUnavailableError, RunInfo
from twiml_assets.web.http import SecurityHeaders, read_limited_form, same_origin, wants_json
from twiml_assets.web.library import (
    FORMATS,
    STATUSES,
    Library,
    episode_status,
)
from twiml_assets.web.settings import WebSettings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PAGE_SIZE = 50


class Services:
    """What the routes share: settings, storage views, the Dagster client, the upload index."""

    def __init__(self, settings: WebSettings, storage: StorageResource, dagster: DagsterClient):
        self.settings = settings
        self.storage = storage
        self.library = Library(storage)
        self.dagster = dagster
        self.sidecars = SidecarIndex(storage)
        self._launch_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def latest_run(self, key: str) -> tuple[RunInfo | None, bool]:
        """(newest run of ``key`` with progress, whether Dagster answered)."""
        try:
            return self.dagster.latest_run(key), True
        except DagsterUnavailableError:
            return None, False

    def status(self, key: str) -> dict[str, Any]:
        """The JSON the pages poll: status, run progress, download links once done."""
        run, reachable = self.latest_run(key)
        done = self.library.is_done(key)
        status = episode_status(done, run)
        return {
            "key": key,
            "status": status,
            "done": done,
            "run": run.to_json() if run else None,
            "dagster": "ok" if reachable else "unavailable",
            "downloads": {f: f"/episodes/{key}/transcript.{f}" for f in FORMATS} if done else {},
        }

    def launch(self, key: str) -> tuple[RunInfo, bool]:
        """(run, newly launched): an active run of the partition is reused, never doubled.

        One lock per key, so two clicks (or an upload and a click) at the same moment in
        this process cannot both see "no run" and launch two.
        """
        with self._locks_lock:
            lock = self._launch_locks.setdefault(key, threading.Lock())
        with lock:
            current = self.dagster.runs(key, limit=1)
            if current and current[0].active:
                return current[0], False
            return self.dagster.launch(key), True


def create_app(
    settings: WebSettings | None = None,
    *,
    storage: StorageResource | None = None,
    dagster: DagsterClient | None = None,
) -> FastAPI:
    """The app; ``storage`` and ``dagster`` can be injected (tests), else built from settings."""
    settings = settings or WebSettings.from_env()
    if storage is None:
        storage = (
            StorageResource(root=settings.storage_root)
            if settings.storage_root
            else StorageResource()
        )
    dagster = dagster or DagsterClient(settings.graphql_url, timeout=settings.graphql_timeout)
    services = Services(settings, storage, dagster)

    app = FastAPI(title="twiml-transcribe", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.services = services
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(
        formats=FORMATS,
        limits=settings.limits,
        poll_seconds=settings.poll_seconds,
        max_upload=format_size(settings.limits.max_bytes),
    )

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def episode_or_404(key: str) -> EpisodeInfo:
        episode = services.library.episode(key) if is_valid_key(key) else None
        if episode is None:
            raise HTTPException(404, "no such episode")
        return episode

    # -- errors: short, page-safe messages only (details go to the server log) -----------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if wants_json(request) or request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=exc.status_code)
        return render(
            request, "error.html", exc.status_code, message=message, status=exc.status_code
        )

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        log.error("storage error on %s: %s", request.url.path, exc)
        return render(
            request, "error.html", 503, message="the storage is not available", status=503
        )

    # -- pages --------------------------------------------------------------------------
    @app.get("/")
    def index(request: Request, q: str = "", status: str = "", page: str = "1") -> Response:
        """Every episode with its status; ``q`` searches titles (and keys)."""
        page_no = int(page) if page.isdigit() else 1
        library = services.library
        episodes = library.episodes()
        done = library.done_keys()
        try:
            runs, reachable = services.dagster.latest_runs(), True
        except DagsterUnavailableError:
            runs, reachable = {}, False
        needle = q.strip().lower()[:200]
        rows = []
        for e in episodes:
            if needle and needle not in e.title.lower() and needle not in e.key:
                continue
            row_status = episode_status(e.key in done, runs.get(e.key))
            if status in STATUSES and row_status != status:
                continue
            rows.append({"episode": e, "status": row_status, "upload": is_upload_key(e.key)})
        pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
        page_no = min(max(1, page_no), pages)
        return render(
            request,
            "index.html",
            rows=rows[(page_no - 1) * PAGE_SIZE : page_no * PAGE_SIZE],
            total=len(rows),
            all_count=len(episodes),
            q=q[:200],
            status=status if status in STATUSES else "",
            statuses=STATUSES,
            page_no=page_no,
            pages=pages,
            dagster_ok=reachable,
        )

    @app.get("/episodes/{key}")
    def episode_page(request: Request, key: str, download: str = "", notice: str = "") -> Response:
        episode = episode_or_404(key)
        state = services.status(key)
        return render(
            request,
            "episode.html",
            episode=episode,
            state=state,
            transcript=services.library.transcript(key),
            has_audio=services.library.audio_relpath(key) is not None,
            download=download if download in FORMATS else "",
            notice=notice if notice in {"linked", "uploaded"} else "",
            dagster_ok=state["dagster"] == "ok",
        )

    @app.get("/upload")
    def upload_form(request: Request) -> Response:
        return render(request, "upload.html", error="")

    # -- files --------------------------------------------------------------------------
    @app.api_route("/episodes/{key}/audio", methods=["GET", "HEAD"])
    def audio(key: str) -> Response:
        """The stored audio; Starlette's FileResponse answers Range requests (seeking)."""
        if not is_valid_key(key):
            raise HTTPException(404, "no such episode")
        found = services.library.audio_file(key)
        if found is None:
            raise HTTPException(404, "no audio stored for this episode")
        path, media_type = found
        return FileResponse(
            path, media_type=media_type, headers={"cache-control": "private, max-age=3600"}
        )

    @app.api_route("/episodes/{key}/transcript.{fmt}", methods=["GET", "HEAD"])
    def transcript_file(key: str, fmt: str) -> Response:
        if not is_valid_key(key) or fmt not in FORMATS:
            raise HTTPException(404, "no such transcript")
        data = services.library.download(key, fmt)
        if data is None:
            raise HTTPException(404, "no transcript yet")
        return Response(
            data,
            media_type=FORMATS[fmt].media_type,
            headers={"content-disposition": f'attachment; filename="{key}.{fmt}"'},
        )

    # -- runs ---------------------------------------------------------------------------
    @app.get("/api/episodes/{key}")
    def status_json(key: str) -> JSONResponse:
        episode_or_404(key)
        return JSONResponse(services.status(key), headers={"cache-control": "no-store"})

    @app.post("/episodes/{key}/transcribe")
    def transcribe(request: Request, key: str) -> Response:
        """Queue the episode's run and return at once; the page polls for progress."""
        if not same_origin(request):
            raise HTTPException(403, "cross-site request refused")
        episode_or_404(key)
        try:
            run, launched = services.launch(key)
        except DagsterUnavailableError as exc:
            if wants_json(request):
                return JSONResponse({"error": str(exc)}, status_code=503)
            raise HTTPException(503, str(exc)) from None
        if wants_json(request):
            return JSONResponse(
                {"key": key, "launched": launched, "run": run.to_json()}, status_code=202
            )
        return RedirectResponse(f"/episodes/{key}", status_code=303)

    @app.post("/upload")
    async def upload(request: Request) -> Response:
        """Store the file as ``up-<hash>`` (or link a published duplicate), launch its run.

        Redirects to the episode page with ``?download=<fmt>``: the page polls the run
        and starts the browser download once the transcript exists.
        """
        if not same_origin(request):
            raise HTTPException(403, "cross-site request refused")
        limits = settings.limits
        form = None
        try:
            form = await read_limited_form(request, limits.max_bytes)
            file = form.get("audio")
            fmt = str(form.get("format") or "md")
            if fmt not in FORMATS:
                raise UploadError(f"unknown transcript format {fmt[:20]!r}")
            if not isinstance(file, UploadFile):
                raise UploadError("choose an audio file to upload")
            staged = await run_in_threadpool(stage_upload, file.file, limits, file.filename)
        except UploadError as exc:
            return upload_refused(request, exc)
        finally:
            if form is not None:
                await form.close()
        try:
            registered = await run_in_threadpool(
                register_upload, services.storage, staged, services.sidecars
            )
        finally:
            staged.discard()
        key = registered.key
        run_json, launched, error = None, False, ""
        if not services.library.is_done(key):
            try:
                run, launched = await run_in_threadpool(services.launch, key)
                run_json = run.to_json()
            except DagsterUnavailableError as exc:
                error = str(exc)
        notice = "linked" if registered.linked else "uploaded"
        target = f"/episodes/{key}?download={fmt}&notice={notice}"
        if wants_json(request):
            return JSONResponse(
                {
                    "key": key,
                    "linked": registered.linked,
                    "stored": registered.stored,
                    "launched": launched,
                    "run": run_json,
                    "error": error or None,
                    "episode_url": target,
                    "download_url": f"/episodes/{key}/transcript.{fmt}",
                },
                status_code=202,
            )
        return RedirectResponse(target, status_code=303)

    def upload_refused(request: Request, exc: UploadError) -> Response:
        log.info("upload refused (%s): %s", exc.status, exc)
        if wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return render(request, "upload.html", exc.status, error=str(exc))

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            services.storage.list("feed")
            storage_ok = True
        except StorageError:
            storage_ok = False
        try:
            services.dagster.repository()
            dagster_ok = True
        except DagsterUnavailableError:
            dagster_ok = False
        return JSONResponse(
            {
                "storage": "ok" if storage_ok else "unavailable",
                "dagster": "ok" if dagster_ok else "unavailable",
            },
            status_code=200 if storage_ok else 503,
        )

    return app
