"""The FastAPI application of `maskrcnn serve`.

    POST /v1/predict   an image as the multipart field `image` or as the raw body; optional
                       `score_thresh` (0..1) and `classes` (names or category ids, comma-separated),
                       in the query or as form fields; `tile` (a tile size in px: tiled inference,
                       see `maskrcnn.tiling`) with optional `tile_overlap` (0.2), `tile_merge`
                       (merge | nms) and `tile_full_image` (1 | true) likewise ->
                       {"width": W, "height": H, "detections": [{"bbox": [x, y, w, h], "score",
                        "category_id", "label", "segmentation": {"size": [H, W], "counts": str}}]}
    GET  /v1/health    {"status": "ok", "batching": {batches, requests, failed, largest_batch, ...},
                        "in_flight": {"requests": uploads in flight, "buffered_bytes": what they hold}}
    GET  /v1/model     class names, category ids, the preset the model's config matches, the model
                       config, backend (pytorch / onnxruntime), device, the server's limits
    GET  /             the web page (static/index.html; static/app.js draws the JSON on a canvas)

With an API key, /v1/predict, /v1/model and /openapi.json want `Authorization: Bearer KEY` (401
otherwise; /docs is off); /v1/health and the page's files stay open (the page asks for the key).

Refusals are JSON {"detail": one line}: 400 for bad options, 401 without the API key, 408 for a body
not received within the request timeout, 413 for an upload over the byte limit or an image over the
pixel limit, 415 for a body that is no image, 503 (with Retry-After) while the uploads in flight hold
the most bytes they may (`guards.py`), 500 for a failure of the model;
none of them stops the server. Decoding runs in a thread pool and inference on the batcher's
thread, so the event loop only moves bytes.
"""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..config import PRESETS, to_dict
from ..errors import UserError
from ..predict_records import detection_records
from .batching import MicroBatcher
from .guards import InFlight, RequestGuard, api_key_dependency
from .uploads import MIB, BodyLimit, UploadError, decode_upload

__all__ = ["backend_of", "create_app", "model_info", "preset_of"]

STATIC = Path(__file__).resolve().parent / "static"


def preset_of(config: Any) -> str | None:
    """The preset whose model section equals `config.model` except for the number of classes."""
    if config is None:
        return None
    for name, make in PRESETS.items():
        preset = make().model
        if dataclasses.replace(preset, num_classes=config.model.num_classes) == config.model:
            return name
    return None


def backend_of(predictor: Any) -> str:
    """ "pytorch" for a torch module, else the model's own `backend` name (e.g. "onnxruntime")."""
    named = getattr(predictor, "backend", None) or getattr(predictor.model, "backend", None)
    if named:
        return str(named)
    import torch

    return "pytorch" if isinstance(predictor.model, torch.nn.Module) else type(predictor.model).__name__


def model_info(predictor: Any) -> dict[str, Any]:
    """What GET /v1/model tells about the model (without the server's limits)."""
    config = getattr(predictor, "config", None)
    return {
        "backend": backend_of(predictor),
        "device": str(predictor.device),
        "precision": getattr(predictor, "precision", "fp32"),  # what runs: bf16 falls back to fp32
        "num_classes": len(predictor.class_names),
        "class_names": list(predictor.class_names),
        "category_ids": [int(i) for i in predictor.category_ids],
        "preset": preset_of(config),
        "config": to_dict(config.model) if config is not None else None,
    }


def _options(values: dict[str, Any], predictor: Any) -> tuple[float | None, list[str] | None]:
    """`score_thresh` and `classes` from query or form values, checked -> (threshold, classes)."""
    score_thresh = None
    raw = values.get("score_thresh")
    if raw not in (None, ""):
        try:
            score_thresh = float(raw)
        except ValueError:
            raise UploadError(400, f"score_thresh must be a number in [0, 1], got {raw!r}") from None
        if not 0.0 <= score_thresh <= 1.0:
            raise UploadError(400, f"score_thresh must be in [0, 1], got {raw}")
    classes = [c for c in values.get("classes", []) if c.strip()] or None
    if classes:
        try:
            predictor.labels_for(classes)
        except UserError as e:
            raise UploadError(400, str(e).replace("--classes: ", "classes: ")) from None
    return score_thresh, classes


TILE_FIELDS = ("tile", "tile_overlap", "tile_merge", "tile_full_image")


def _tile_option(values: dict[str, Any]) -> Any:
    """`tile` (and `tile_overlap`, `tile_merge`, `tile_full_image`) -> a TileSettings, or None
    without `tile`; a bad value is a 400 naming the field."""
    from ..tiling import TileSettings

    raw = {k: values.get(k) for k in TILE_FIELDS if values.get(k) not in (None, "")}
    if "tile" not in raw:
        extra = sorted(raw)
        if extra:
            raise UploadError(400, f"{extra[0]} needs tile (a tile size in px)")
        return None
    try:
        size = int(raw["tile"])
    except ValueError:
        raise UploadError(400, f"tile must be a tile size in px, got {raw['tile']!r}") from None
    try:
        overlap = float(raw.get("tile_overlap", 0.2))
    except ValueError:
        raise UploadError(400, f"tile_overlap must be a number, got {raw['tile_overlap']!r}") from None
    full = str(raw.get("tile_full_image", "false")).lower()
    if full not in ("0", "1", "false", "true"):
        raise UploadError(400, f"tile_full_image must be true or false, got {full!r}")
    try:
        return TileSettings(
            size, overlap=overlap, merge=raw.get("tile_merge", "merge"), full_image=full in ("1", "true")
        )
    except UserError as e:
        raise UploadError(400, str(e)) from None


def _labelled_records(det: Any, predictor: Any) -> list[dict[str, Any]]:
    """COCO result records (`maskrcnn.predict_records.detection_records`) with each class name as `label`."""
    records = detection_records(det, category_ids=predictor.category_ids)
    names = predictor.class_names
    for record, label in zip(records, det.labels.tolist()):
        record["label"] = names[label - 1] if 0 < label <= len(names) else str(label)
    return records


async def _read_request(request: Request) -> tuple[bytes, str, dict[str, Any]]:
    """-> (image bytes, a name for messages, options as {"score_thresh": str, "classes": [str]})."""
    values: dict[str, Any] = {
        "score_thresh": request.query_params.get("score_thresh"),
        "classes": request.query_params.getlist("classes"),
        **{k: request.query_params.get(k) for k in TILE_FIELDS},
    }
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        form = await request.form(max_files=2, max_fields=20)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise UploadError(400, "multipart upload without a file field 'image'")
        data = await upload.read()
        name = upload.filename or "image"
        if isinstance(form.get("score_thresh"), str):
            values["score_thresh"] = form.get("score_thresh")
        values["classes"] += [c for c in form.getlist("classes") if isinstance(c, str)]
        values.update({k: form.get(k) for k in TILE_FIELDS if isinstance(form.get(k), str)})
        return data, name, values
    return await request.body(), "body", values


def create_app(
    predictor: Any,
    *,
    max_batch_size: int = 8,
    max_batch_wait_ms: float = 10.0,
    max_upload_mb: float = 20.0,
    max_pixels: int = 40_000_000,
    request_timeout_s: float = 30.0,
    max_buffered_mb: float = 256.0,
    api_key: str | None = None,
) -> FastAPI:
    """The application serving `predictor` (a `maskrcnn.Predictor`); the batcher's worker runs
    while the application does (its lifespan). `api_key`: the bearer token the API wants (None: open)."""
    batcher = MicroBatcher(predictor, max_batch_size=max_batch_size, max_wait_s=max_batch_wait_ms / 1000)
    info = model_info(predictor)
    limits = {
        "max_batch_size": max_batch_size,
        "max_batch_wait_ms": max_batch_wait_ms,
        "max_upload_mb": max_upload_mb,
        "max_pixels": max_pixels,
        "request_timeout_s": request_timeout_s,
        "max_buffered_mb": max_buffered_mb,
    }
    in_flight = InFlight(
        max_buffered_bytes=int(max_buffered_mb * MIB), retry_after_s=min(request_timeout_s, 10)
    )
    protected = [Depends(api_key_dependency(api_key))] if api_key else []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    schema = None if api_key else "/openapi.json"  # with a key: served below, behind it
    app = FastAPI(
        title="maskrcnn", summary="Mask R-CNN instance segmentation", lifespan=lifespan, openapi_url=schema
    )
    app.add_middleware(RequestGuard, request_timeout_s=request_timeout_s, budget=in_flight)
    app.add_middleware(BodyLimit, max_bytes=int(max_upload_mb * MIB))  # outside the guard: 413 first
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.batcher = batcher

    @app.exception_handler(UploadError)
    async def refused(request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.reason}, status_code=error.status)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        reason = " ".join(str(error).split()) or type(error).__name__
        return JSONResponse({"detail": f"prediction failed: {reason}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "batching": batcher.snapshot(), "in_flight": in_flight.snapshot()}

    if api_key:

        @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
        async def openapi() -> dict[str, Any]:
            return app.openapi()

    @app.get("/v1/model", dependencies=protected)
    async def model() -> dict[str, Any]:
        return {**info, "limits": limits}

    @app.post("/v1/predict", dependencies=protected)
    async def predict(request: Request) -> dict[str, Any]:
        """The image as the multipart field `image` or the raw body; `score_thresh`, `classes`, `tile`."""
        data, name, values = await _read_request(request)
        score_thresh, classes = _options(values, predictor)
        tile = _tile_option(values)
        image = await run_in_threadpool(
            decode_upload,
            data,
            max_pixels=max_pixels,
            name=name,
            resize=getattr(predictor, "input_size", None),
        )
        det = await batcher.submit(image, score_thresh=score_thresh, classes=classes, tile=tile)
        records = await run_in_threadpool(_labelled_records, det, predictor)  # RLE encoding takes time
        return {"width": int(image.shape[-1]), "height": int(image.shape[-2]), "detections": records}

    return app
