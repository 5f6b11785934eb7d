"""Deployment runtimes for one model: eager fp32 / bf16, torch.compile (inductor), INT8 post-training
static quantization (PyTorch's x86 FX flow) and ONNX Runtime's CPU execution provider.

INT8 uses ``torch.ao.quantization``'s FX graph mode (``prepare_fx`` / ``convert_fx`` with the
``x86`` qconfig mapping: per-channel int8 weights, uint8 activations, run by the x86 engine's
oneDNN/FBGEMM kernels); it is deprecated in torch 2.14 but still works on the CPU, while the PT2E
flow (``quantize_pt2e`` with ``X86InductorQuantizer``) has moved out of torch into torchao, which
this project does not install. ONNX uses the TorchScript exporter (``dynamo=False``: the
torch.export-based one needs onnxscript) with a dynamic batch axis, and every graph optimisation.
"""

from __future__ import annotations

import copy
import io
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

RUNTIMES = ("eager_fp32", "eager_bf16", "compiled_fp32", "compiled_bf16", "int8", "onnxruntime")
# Largest |runtime - eager fp32| / max |eager fp32| on a check batch that counts as agreeing.
DEFAULT_TOLERANCES = {
    "eager_fp32": 0.0,
    "eager_bf16": 0.05,
    "compiled_fp32": 1e-3,
    "compiled_bf16": 0.05,
    "int8": 0.15,
    "onnxruntime": 1e-3,
}


@dataclass
class Prepared:
    """A model made ready for one runtime."""

    runtime: str
    run: Callable[[torch.Tensor], torch.Tensor]  # one inference on a batch, output as a torch tensor
    make_call: Callable[[torch.Tensor], Callable[[], Any]]  # a zero-argument timed call, input converted once
    prepare_s: float  # quantisation + calibration, or export + session creation (compilation: first call)


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor]) -> nn.Module:
    """INT8 post-training static quantization of a copy of ``model`` (FX graph mode, x86 qconfig),
    observers calibrated on ``calibration`` batches; batch norm is folded into the convolutions."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = list(calibration)
    if not batches:
        raise ValueError("INT8 calibration needs at least one batch")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and observer notices, one per layer
            float_model = copy.deepcopy(model).float().eval()
            prepared = prepare_fx(float_model, get_default_qconfig_mapping("x86"), (batches[0],))
            with torch.inference_mode():
                for x in batches:
                    prepared(x)
            return convert_fx(prepared)
    finally:
        torch.backends.quantized.engine = previous


@torch.inference_mode()
def _accuracy(model: Callable[[torch.Tensor], torch.Tensor], batches: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    correct = total = 0
    for x, y in batches:
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct, total


def quantized_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    calibration_batches: Iterable[torch.Tensor | tuple[torch.Tensor, Any]],
) -> dict[str, Any]:
    """Test accuracy of ``model`` in fp32 and after INT8 quantization calibrated on
    ``calibration_batches`` (training images; labels ignored), and the change in points."""
    calibration = [b[0] if isinstance(b, tuple | list) else b for b in calibration_batches]
    evaluation = [(x, y) for x, y in batches]
    float_model = copy.deepcopy(model).float().eval()
    quantized = quantize_int8(float_model, calibration)
    fp32_correct, total = _accuracy(float_model, evaluation)
    int8_correct, _ = _accuracy(quantized, evaluation)
    if total == 0:
        raise ValueError("quantized_accuracy needs at least one labelled batch")
    fp32, int8 = 100.0 * fp32_correct / total, 100.0 * int8_correct / total
    return {
        "fp32_accuracy": fp32,
        "int8_accuracy": int8,
        "change_points": int8 - fp32,
        "images": total,
        "calibration_images": sum(len(x) for x in calibration),
        "method": "torch.ao.quantization FX prepare_fx/convert_fx, x86 qconfig mapping",
    }


def export_onnx(model: nn.Module, example: torch.Tensor, opset: int = 17) -> bytes:
    """The model as ONNX bytes, batch dimension dynamic."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
        torch.onnx.export(
            copy.deepcopy(model).float().eval(),
            (example,),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    return buffer.getvalue()


def onnx_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _torch_prepared(runtime: str, model: nn.Module, channels_last: bool, start: float) -> Prepared:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    if runtime.startswith("compiled"):
        model = torch.compile(model, dynamic=False)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if runtime.endswith("bf16") else nullcontext()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), cast:
            return model(x.contiguous(memory_format=layout)).float()

    def make_call(x: torch.Tensor) -> Callable[[], Any]:
        x = x.contiguous(memory_format=layout)

        def call() -> Any:
            with torch.inference_mode(), cast:
                return model(x)

        return call

    return Prepared(runtime, run, make_call, time.perf_counter() - start)


def prepare(
    runtime: str,
    model: nn.Module,
    example: torch.Tensor,
    calibration: Sequence[torch.Tensor],
    threads: int,
    channels_last: bool = False,
    opset: int = 17,
) -> Prepared:
    """``model`` (eval mode, fp32, CPU) ready to run on ``runtime`` (one of ``RUNTIMES``)."""
    start = time.perf_counter()
    model = copy.deepcopy(model).float().eval()
    if runtime in ("eager_fp32", "eager_bf16", "compiled_fp32", "compiled_bf16"):
        return _torch_prepared(runtime, model, channels_last, start)
    if runtime == "int8":
        quantized = quantize_int8(model, calibration)

        def run_int8(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return quantized(x)

        def call_int8(x: torch.Tensor) -> Callable[[], Any]:
            return lambda: run_int8(x)

        return Prepared(runtime, run_int8, call_int8, time.perf_counter() - start)
    if runtime == "onnxruntime":
        session = onnx_session(export_onnx(model, example, opset), threads)

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

        def call_onnx(x: torch.Tensor) -> Callable[[], Any]:
            feed = {"input": x.contiguous().numpy()}
            return lambda: session.run(None, feed)

        return Prepared(runtime, run_onnx, call_onnx, time.perf_counter() - start)
    raise ValueError(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIMES)}")


@torch.inference_mode()
def agreement(prepared: Prepared, reference: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """How far the runtime's output is from eager fp32 on ``x``: max abs error relative to the largest
    reference output, and the share of rows whose arg-max (predicted class) is the same."""
    ref = reference.float().eval()(x).float()
    out = prepared.run(x).float()
    scale = float(ref.abs().max()) or 1.0
    same = float((out.argmax(dim=-1) == ref.argmax(dim=-1)).float().mean()) if ref.dim() > 1 else math.nan
    return {"max_rel_error": float((out - ref).abs().max()) / scale, "top1_agreement": same}
