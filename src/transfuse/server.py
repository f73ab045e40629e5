"""``transfuse serve RUN``: the run's model over HTTP (FastAPI + uvicorn).

``GET /health`` says what is served. ``POST /predict`` takes image or audio files as multipart
uploads (field ``files``), texts as JSON ``{"inputs": [...]}``, or a multimodal model's inputs as
JSON ``{"inputs": [{"image": BASE64, "text": "..."}, ...]}`` (one object per input, keyed by
modality or by the run's own columns, each file's bytes base64-encoded), and answers the records
``transfuse predict --json`` prints, in input order: ``[{"input", "label", "proba": {class: p}}]``.
A text is always the text itself (the server never reads a file a client names). Concurrent
requests are batched: the first waits up to ``max_wait_ms`` for others, and one thread runs the
model on all of them (up to ``max_batch`` inputs). A bad request gets a 4xx with one line in
``detail``: what, which input, the fix.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations here

from transfuse.api.inputs import Batch
from transfuse.api.run import Run
from transfuse.errors import UserError


@dataclass
class Limits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_inputs: int = 256
    max_text_chars: int = 100_000
    max_batch: int = 64
    max_wait_ms: float = 5.0


@dataclass
class _Job:
    batch: Batch
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Collects concurrent requests into one model call (``fn(Batch) -> (n, C) array``)."""

    def __init__(self, fn: Any, modality: str, limits: Limits):
        self.fn, self.modality, self.limits = fn, modality, limits
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transfuse-predict")
        self.task: asyncio.Task | None = None
        self.batches = self.requests = 0  # model calls, and the requests they answered

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, batch: Batch) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(batch, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            n = len(jobs[0].batch)
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while n < self.limits.max_batch:
                timeout = deadline - loop.time()
                try:
                    job = self.queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self.queue.get(), timeout)
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                jobs.append(job)
                n += len(job.batch)
            merged = Batch(self.modality, [it for j in jobs for it in j.batch.items],
                           [nm for j in jobs for nm in j.batch.names])
            try:
                P = await loop.run_in_executor(self.pool, self.fn, merged)
            except Exception as e:  # a model failure answers every waiting request
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.batches += 1
            self.requests += len(jobs)
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(P[start:start + len(j.batch)])
                start += len(j.batch)


def _decode_image(data: bytes, what: str) -> np.ndarray:
    """File bytes -> RGB uint8 array, decoded as ``transfuse predict`` decodes a file."""
    from PIL import Image, UnidentifiedImageError

    from transfuse.data.images import load_image

    try:
        return np.asarray(load_image(io.BytesIO(data)))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{what} is not a decodable image ({type(e).__name__}); send PNG, JPEG, "
                        "BMP, GIF, WebP or TIFF files") from None


def _decode_audio(data: bytes, what: str, suffix: str = ".wav") -> tuple[np.ndarray, int]:
    from transfuse.data.audio_folder import decode

    with tempfile.NamedTemporaryFile(suffix=suffix) as f:
        f.write(data)
        f.flush()
        try:
            wave, sr = decode(f.name)
        except Exception as e:  # soundfile raises its own LibsndfileError and RuntimeError
            raise UserError(f"{what} is not decodable audio ({type(e).__name__}); send WAV, FLAC or "
                            "OGG files") from None
    if wave.size == 0 or not np.isfinite(wave).all():
        raise UserError(f"{what} holds no finite audio samples; send a non-empty recording")
    return wave, sr


def create_app(run_dir: str | Path, candidate: str | None = None, engine: str = "auto",
               limits: Limits | None = None) -> Any:
    """The FastAPI application serving ``run_dir``'s chosen model (or ``candidate``)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.datastructures import UploadFile

    from transfuse.api.multimodal import modality_inputs, shape
    from transfuse.export.predict import model_folder, multimodal_columns

    limits = limits or Limits()
    run = Run(run_dir)
    spec = run._spec(candidate)
    classes, modality = list(spec.classes), spec.modality
    if modality not in ("image", "text", "audio", "multimodal"):
        raise UserError(f"{str(run_dir)!r} holds a {modality} model; 'transfuse serve' serves image, text, "
                        "audio and multimodal models")
    columns = multimodal_columns(model_folder(run.path, candidate)) if modality == "multimodal" else {}
    run._model(candidate, engine)  # load (and fail) at start, not on the first request

    def proba(batch: Batch) -> np.ndarray:
        return run.predict_proba(batch, candidate=candidate, engine=engine)

    batcher = Batcher(proba, modality, limits)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="transfuse", lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"detail": msg}, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "run": str(run.path), "model": candidate or run.chosen, "modality": modality,
                **({"columns": columns} if columns else {}), "classes": classes,
                "engine": run._model(candidate, engine)[2], "batches": batcher.batches, "requests": batcher.requests}

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype == "application/json":
                batch = await (_json_multimodal(request) if columns else _json_batch(request))
            elif ctype == "multipart/form-data":
                batch = await _upload_batch(request)
            else:
                how = ('JSON {"inputs": [...]}' if modality == "text" else multimodal_how if columns
                       else f"multipart/form-data with the {modality} files in the field 'files'")
                return error(415, f"content type {ctype or 'none'!r} is not accepted; POST {how}")
        except UserError as e:
            return error(getattr(e, "status", 422), str(e))
        P = await batcher.submit(batch)
        return [{"input": name, "label": classes[int(p.argmax())], "proba": {c: float(v) for c, v in zip(classes, p)}}
                for name, p in zip(batch.names, P, strict=True)]

    async def _json_batch(request: Request) -> Batch:
        if modality != "text":
            raise UserError(f"this model takes {modality} inputs: send them as multipart/form-data files in the "
                            "field 'files', not JSON")
        body = await request.body()
        if len(body) > limits.max_upload_bytes:
            raise _status(413, f"the JSON body is {len(body)} bytes, over the limit of {limits.max_upload_bytes}; "
                               "send fewer or shorter texts per request")
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, ValueError) as e:
            raise _status(400, f"the body is not valid JSON ({type(e).__name__}); send {{\"inputs\": [\"text\", ...]}}")
        texts = obj.get("inputs") if isinstance(obj, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise UserError('the body must be {"inputs": ["text", ...]}: a non-empty list of strings')
        _check_count(len(texts))
        long = next((i for i, t in enumerate(texts) if len(t) > limits.max_text_chars), None)
        if long is not None:
            raise _status(413, f"input {long} has {len(texts[long])} characters, over the limit of "
                               f"{limits.max_text_chars}; shorten it")
        empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
        if empty is not None:
            raise UserError(f"input {empty} is an empty text; send texts with words in them")
        return Batch("text", texts, texts)

    per_input = f"one {shape(columns)} per input, each file's bytes base64-encoded"
    multimodal_how = f'JSON {{"inputs": [...]}}, {per_input}'

    async def _json_multimodal(request: Request) -> Batch:
        cap = limits.max_upload_bytes * limits.max_inputs
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise _status(413, f"the JSON body is over the limit of {cap} bytes ({limits.max_inputs} inputs of "
                                   f"{limits.max_upload_bytes} bytes); send fewer inputs per request")
        try:
            obj = json.loads(bytes(body))
        except (UnicodeDecodeError, ValueError) as e:
            raise _status(400, f"the body is not valid JSON ({type(e).__name__}); send {multimodal_how}")
        inputs = obj.get("inputs") if isinstance(obj, dict) else None
        if not isinstance(inputs, list) or not inputs:
            raise UserError(f'the body must be {{"inputs": [...]}} with at least one input: {per_input}')
        _check_count(len(inputs))
        items = []
        for i, x in enumerate(inputs):
            where = f"input {i}"
            item = modality_inputs(x, columns, where)
            if len(item.get("text", "")) > limits.max_text_chars:
                raise _status(413, f"{where}: the text has {len(item['text'])} characters, over the limit of "
                                   f"{limits.max_text_chars}; shorten it")
            for m in [m for m in item if m != "text"]:
                item[m] = await asyncio.to_thread(_decode_file, m, item[m], f"{where}: the {m} file")
            items.append(item)
        return Batch("multimodal", items, [f"input:{i}" for i in range(len(items))])

    def _decode_file(m: str, value: Any, what: str) -> Any:
        """A base64 string of a file's bytes -> the decoded image or audio (size-limited)."""
        if not isinstance(value, str):
            raise UserError(f"{what} is of type {type(value).__name__}; send the file's bytes base64-encoded")
        if len(value) // 4 * 3 > limits.max_upload_bytes + 2:
            raise _status(413, f"{what} is over the limit of {limits.max_upload_bytes} bytes (--max-upload-mb); "
                               "send a smaller file")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise UserError(f"{what} is not base64; send the file's bytes base64-encoded") from None
        if len(data) > limits.max_upload_bytes:
            raise _status(413, f"{what} is over the limit of {limits.max_upload_bytes} bytes (--max-upload-mb); "
                               "send a smaller file")
        return _decode_image(data, what) if m == "image" else _decode_audio(data, what)

    async def _upload_batch(request: Request) -> Batch:
        if modality == "text":
            raise UserError('this model takes texts: POST JSON {"inputs": ["text", ...]}, not file uploads')
        if columns:
            raise UserError(f"this multimodal model takes POST {multimodal_how}, not file uploads")
        length = int(request.headers.get("content-length") or 0)
        if length > limits.max_upload_bytes * limits.max_inputs:
            raise _status(413, f"the request is {length} bytes, over {limits.max_inputs} uploads of "
                               f"{limits.max_upload_bytes} bytes; send fewer or smaller files")
        try:
            form = await request.form(max_files=limits.max_inputs + 1,
                                      max_part_size=limits.max_upload_bytes + 1)
        except Exception as e:  # starlette's MultiPartException for a part over the limit or a bad body
            msg = str(getattr(e, "detail", e)) or type(e).__name__
            if "size" in msg.lower() or "exceed" in msg.lower():
                raise _status(413, f"an upload is over the limit of {limits.max_upload_bytes} bytes "
                                   "(--max-upload-mb); send smaller files") from None
            raise _status(400, f"the multipart body cannot be read ({msg}); send the files in the field 'files'") from None
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise UserError(f"no files in the field 'files'; send the {modality} files as multipart/form-data "
                            "uploads named 'files'")
        _check_count(len(files))
        items, names = [], []
        for f in files:
            data = await f.read(limits.max_upload_bytes + 1)
            name = f.filename or f"file{len(names)}"
            if len(data) > limits.max_upload_bytes:
                raise _status(413, f"upload {name!r} is over the limit of {limits.max_upload_bytes} bytes "
                                   "(--max-upload-mb); send a smaller file")
            if not data:
                raise UserError(f"upload {name!r} is empty (0 bytes); send the file's contents")
            if modality == "image":
                items.append(await asyncio.to_thread(_decode_image, data, f"upload {name!r}"))
            else:
                items.append(await asyncio.to_thread(_decode_audio, data, f"upload {name!r}",
                                                     Path(name).suffix or ".wav"))
            names.append(name)
        return Batch(modality, items, names)

    def _check_count(n: int) -> None:
        if n > limits.max_inputs:
            raise _status(413, f"{n} inputs in one request, over the limit of {limits.max_inputs}; split the request")

    return app


def _status(code: int, msg: str) -> UserError:
    e = UserError(msg)
    e.status = code  # type: ignore[attr-defined]
    return e


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, candidate: str | None = None,
          engine: str = "auto", limits: Limits | None = None) -> None:
    """Run the server until interrupted (a busy port is a one-line error)."""
    import socket

    import uvicorn

    app = create_app(run_dir, candidate, engine, limits)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another port with --port") from None
    print(f"serving {run_dir} on http://{host}:{port} (POST /predict, GET /health)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
