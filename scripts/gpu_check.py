"""The checks that need a CUDA GPU, one line each: ``PASS|FAIL|SKIP name: detail``.

Run by ``scripts/gpu_check.sh`` (docs/distributed.md, "GPU checks"). Each check runs in its own
subprocess with a time limit, so a CUDA error or a hang in one is reported as its FAIL and the
others still run. Exit code: 1 if any check failed, else 0 (also when every check was skipped
because there is no CUDA device). Meant to finish in well under 5 minutes on one GPU.

- ``merge_cuda``: ``transfuse merge`` on CUDA gives the CPU result (TIES, DARE-TIES with its
  seeded drop masks, task arithmetic, SLERP; 3 models of 4.2 M parameters).
- ``finetune_bf16``: ``precision: auto`` resolves to bf16-mixed on this GPU; the first
  validation pass under bf16-mixed gives the fp32 CPU loss within 2 %; one epoch of steps stays
  finite and lowers the training loss.
- ``ddp_1gpu``: a fine-tune with ``strategy: ddp`` on 1 GPU (NCCL process group) trains and
  records ``world_size`` 1.
- ``onnx_cuda``: ONNX Runtime's CUDA provider gives the CPU provider's probabilities (1e-3) for
  an exported EfficientNet-Lite0 classifier; SKIP where onnxruntime has no CUDA provider.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKS = ("merge_cuda", "finetune_bf16", "ddp_1gpu", "onnx_cuda")
TIMEOUT_S = 150


class Skip(Exception):
    pass


def _digits(n: int, size: int):
    """``n`` real handwritten digits (scikit-learn), upscaled to ``size`` px RGB, as a Dataset."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from transfuse.data.base import Dataset

    d = load_digits()
    imgs = [Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((size, size)).convert("RGB")
            for im in d.images[:n]]
    return Dataset(modality="image", items=imgs, labels=d.target[:n], classes=[str(c) for c in range(10)],
                   ids=[f"digits:{i}" for i in range(n)])


def check_merge_cuda() -> str:
    import torch
    from safetensors.torch import load_file, save_file

    from transfuse.fuse.merge import merge

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_merge_"))
    paths = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        sd = {f"layer{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(4)}
        sd["bias"] = torch.randn(4096, generator=g)
        save_file(sd, tmp / f"m{seed}.safetensors")
        paths.append(str(tmp / f"m{seed}.safetensors"))
    worst = {}
    for method, params in (("ties", {"density": 0.5}), ("dare_ties", {"density": 0.5}),
                           ("task_arithmetic", {}), ("slerp", {"t": 0.3})):
        models = paths[1:] if method != "slerp" else paths[1:2]
        cfg = {"merge_method": method, "base_model": paths[0], "models": models, "parameters": params}
        merge({**cfg, "device": "cpu"}, tmp / f"{method}-cpu")
        r = merge({**cfg, "device": "cuda"}, tmp / f"{method}-gpu")
        if not str(r.device).startswith("cuda"):
            raise AssertionError(f"{method}: merged on {r.device}, not on CUDA")
        cpu = {k: v for f in sorted((tmp / f"{method}-cpu").glob("*.safetensors")) for k, v in load_file(f).items()}
        gpu = {k: v for f in sorted((tmp / f"{method}-gpu").glob("*.safetensors")) for k, v in load_file(f).items()}
        if set(cpu) != set(gpu):
            raise AssertionError(f"{method}: CUDA wrote tensors {sorted(set(gpu) ^ set(cpu))} the CPU did not")
        worst[method] = max(float((cpu[k] - gpu[k]).abs().max()) for k in cpu)
        if worst[method] > 1e-5:
            raise AssertionError(f"{method}: max |cuda - cpu| = {worst[method]:.2e} > 1e-5")
    return "max |cuda - cpu|: " + ", ".join(f"{m} {d:.1e}" for m, d in worst.items())


def _finetune(precision: str, accelerator: str, strategy: str = "auto", epochs: int = 1):
    from transfuse.backbones.registry import create_backbone
    from transfuse.config import FinetuneConfig
    from transfuse.train.finetune import finetune

    data = _digits(320, 64)
    train, val = data.subset(range(256)), data.subset(range(256, 320))
    cfg = FinetuneConfig(epochs=epochs, batch_size=32, lr=1e-3, head_lr="10x", precision=precision,
                         accelerator=accelerator, devices=1, strategy=strategy, num_workers=0, patience=None)
    out = Path(tempfile.mkdtemp(prefix=f"gpu_check_ft_{accelerator}_"))
    bb = create_backbone("bundled:efficientnet_lite0", image_size=64)
    return finetune(bb, train, val, 10, cfg, out, seed=0, progress=False)


def check_finetune_bf16() -> str:
    import math

    import torch

    from transfuse.train.finetune import resolve_precision

    auto = resolve_precision("auto", "gpu")
    if auto != "bf16-mixed":
        raise Skip(f"{torch.cuda.get_device_name()} has no bf16 (precision auto -> {auto})")
    t = time.perf_counter()
    gpu = _finetune("bf16-mixed", "gpu", epochs=2)
    secs = time.perf_counter() - t
    cpu = _finetune("32-true", "cpu", epochs=1)
    l16, l32 = gpu.initial["val_loss"], cpu.initial["val_loss"]
    if abs(l16 - l32) > 0.02 * abs(l32):
        raise AssertionError(f"first validation loss bf16-mixed {l16:.4f} vs fp32 CPU {l32:.4f}: over 2 % apart")
    losses = [h["train_loss"] for h in gpu.history]
    if not all(math.isfinite(v) for v in losses) or losses[-1] >= losses[0]:
        raise AssertionError(f"bf16-mixed training losses {losses}: not finite or not falling")
    return (f"val loss before training bf16 {l16:.4f} / fp32 CPU {l32:.4f}; train loss {losses[0]:.3f} -> "
            f"{losses[-1]:.3f} in 2 epochs ({secs:.1f} s)")


def check_ddp_1gpu() -> str:
    import torch.distributed as dist

    res = _finetune("auto", "gpu", strategy="ddp")
    backend = dist.get_backend() if dist.is_initialized() else None
    if res.world_size != 1 or backend != "nccl":
        raise AssertionError(f"world_size {res.world_size}, backend {backend}; expected 1 and nccl")
    acc = res.history[-1]["val_accuracy"]
    return f"1 epoch under DDP (nccl, world 1): val accuracy {res.initial['val_accuracy']:.3f} -> {acc:.3f}"


def check_onnx_cuda() -> str:
    import numpy as np
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed") from None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider (providers: "
                   f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu to check it")
    from transfuse.backbones.registry import create_backbone
    from transfuse.train.finetune import Classifier

    torch.manual_seed(0)
    model = Classifier(create_backbone("bundled:efficientnet_lite0", image_size=64), 10).eval()

    class Proba(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return torch.softmax(self.m(x), -1)

    x = torch.randn(8, 3, 64, 64)
    path = Path(tempfile.mkdtemp(prefix="gpu_check_onnx_")) / "model.onnx"
    torch.onnx.export(Proba(model), (x,), str(path), dynamo=True, input_names=["input"], output_names=["proba"],
                      external_data=False)
    outs = {}
    for prov in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        sess = ort.InferenceSession(str(path), providers=[prov])
        if sess.get_providers()[0] != prov:
            raise AssertionError(f"{prov} requested, session runs on {sess.get_providers()}")
        outs[prov] = sess.run(None, {"input": x.numpy()})[0]
    d = float(np.abs(outs["CPUExecutionProvider"] - outs["CUDAExecutionProvider"]).max())
    if d > 1e-3:
        raise AssertionError(f"max |p_cuda - p_cpu| = {d:.2e} > 1e-3")
    return f"max |p_cuda - p_cpu| = {d:.1e} on 8 inputs"


def run_one(name: str) -> int:
    """Run check ``name`` in this process; print its line; 0 pass, 1 fail, 3 skip."""
    try:
        detail = globals()[f"check_{name}"]()
    except Skip as e:
        print(f"SKIP {name}: {e}", flush=True)
        return 3
    except Exception as e:  # noqa: BLE001 -- any error is this check's FAIL, with its message
        msg = " ".join(str(e).split())[:300]
        print(f"FAIL {name}: {type(e).__name__}: {msg}", flush=True)
        return 1
    print(f"PASS {name}: {detail}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        return run_one(argv[1])
    names = argv or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"error: unknown check(s) {', '.join(unknown)}; valid: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        why = f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
        for n in names:
            print(f"SKIP {n}: {why}")
        print(f"gpu_check: 0 passed, 0 failed, {len(names)} skipped: {why}")
        return 0
    print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}",
          flush=True)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for n in names:
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, __file__, "--check", n], capture_output=True, text=True,
                               timeout=TIMEOUT_S, env=env)
            lines = [s for s in p.stdout.splitlines() if s.split(" ", 1)[0] in counts]
            line = lines[-1] if lines else (f"FAIL {n}: exit code {p.returncode}, no result line; stderr: "
                                            + " ".join(p.stderr.split()[-40:]))
        except subprocess.TimeoutExpired:
            line = f"FAIL {n}: no result in {TIMEOUT_S} s"
        counts[line.split(" ", 1)[0]] += 1
        print(f"{line} [{time.perf_counter() - t:.0f} s]", flush=True)
    print(f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
