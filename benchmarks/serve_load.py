"""Load test of ``transfuse serve``: a bounded number of requests (default 2,000) from a fixed
number of concurrent clients (default 8) against a real uvicorn server on loopback, for an image
model (one PNG upload per request; sklearn digits, EfficientNet-Lite0 probe at 32 px) and a text
model (one JSON text per request; TF-IDF). Reports p50/p99 latency, throughput, errors, and how many
batched model calls served the requests. Every answer is checked against the label the model gives
the same input through the Python API.

    python benchmarks/serve_load.py [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import numpy as np

TEXTS = ["the dog barked at the cat", "a cat sat on the mat", "the horse ran across the field",
         "a cow gave milk in the barn", "the sheep grazed on the hill", "a bird sang in the tree",
         "bread baked with flour and yeast", "a bowl of rice with beans", "fresh apples and pears",
         "cheese made from milk and salt", "a pot of soup with carrots", "pasta with tomato sauce"] * 2


def build_runs(root: Path) -> dict[str, tuple[Path, list]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    import transfuse

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == c)[:20] for c in range(10)])
    imgs = np.stack([np.asarray(Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)))
                     for i in idx])
    img_run = transfuse.fit(imgs, d.target[idx], backbones=["bundled:efficientnet_lite0"], image_size=32, folds=2,
                            out=root / "image", config={"fuse": {"enabled": False}})
    labels = (["animal"] * 6 + ["food"] * 6) * 2
    txt_run = transfuse.fit(TEXTS, labels, backbones=["tfidf"], folds=2, out=root / "text")
    pngs = []
    for a in imgs[:50]:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    img_expected = list(img_run.predict(list(imgs[:50])))
    txt_expected = list(txt_run.predict(TEXTS))
    return {"image": (img_run.path, list(zip(pngs, img_expected))),
            "text": (txt_run.path, list(zip(TEXTS, txt_expected)))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, kind: str, inputs: list, n: int, concurrency: int) -> dict:
    import httpx

    lat: list[float] = []
    errors = wrong = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(i: int) -> None:
            nonlocal errors, wrong
            item, expected = inputs[i % len(inputs)]
            async with sem:
                t = time.perf_counter()
                try:
                    if kind == "image":
                        r = await client.post(url + "/predict", files=[("files", (f"{i}.png", item, "image/png"))])
                    else:
                        r = await client.post(url + "/predict", json={"inputs": [item]})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                lat.append(time.perf_counter() - t)
            if not ok:
                errors += 1
            elif r.json()[0]["label"] != expected:
                wrong += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
        health = (await client.get(url + "/health")).json()
    ms = np.array(lat) * 1000
    return {"model": kind, "requests": n, "concurrency": concurrency, "p50 ms": float(np.percentile(ms, 50)),
            "p99 ms": float(np.percentile(ms, 99)), "max ms": float(ms.max()), "requests/s": n / wall,
            "errors": errors, "wrong labels": wrong, "model calls": health["batches"],
            "mean requests per call": health["requests"] / max(1, health["batches"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--name", default="serve_load")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        runs = build_runs(Path(tmp))
        for kind, (run, inputs) in runs.items():
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "transfuse.cli", "serve", str(run), "--port", str(port)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            try:
                import httpx

                deadline = time.monotonic() + 300
                while True:
                    try:
                        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                        break
                    except httpx.TransportError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit(f"server did not start: {proc.stdout.read()[-2000:]}") from None
                        time.sleep(0.2)
                row = asyncio.run(load(f"http://127.0.0.1:{port}", kind, inputs, args.requests, args.concurrency))
                rows.append(row)
                print(row, flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    cols = ["model", "requests", "concurrency", "p50 ms", "p99 ms", "max ms", "requests/s", "errors", "wrong labels",
            "model calls", "mean requests per call"]
    print(_common.write_results(args.name, rows, cols, extra={
        "what": "one input per request over loopback, server and client on the same machine; server threads: "
                "OMP_NUM_THREADS (1 unless set)"}))


if __name__ == "__main__":
    main()
