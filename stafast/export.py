"""Export the embedding model of a checkpoint for deployment: ONNX or a torch.export program (.pt2).

    python -m stafast.export --checkpoint runs/mars/checkpoint.pt --format onnx --output sta.onnx
    python -m stafast.export --checkpoint C --format pt2 --output sta.pt2 [--frames N --height H --width W]

The exported model maps clips (B, N, 3, H, W), float32 and normalised as the data loaders do, to
L2-normalised embeddings (B, embed_dim).  The batch B is dynamic; N, H and W are fixed at export
(by default the checkpoint's training values).  The training-only outputs (diversity penalty,
attention maps) are left out.

pt2: torch.export with the stafast ops kept as custom ops (torch.ops.stafast.*); `import
stafast.ops` before torch.export.load registers them, and they run on the backend chosen at run
time (stafast.ops.backend).  ONNX: the same program with each stafast op decomposed into its
reference math (stafast/ops/reference.py: softmax, matmul, ...), so the file holds standard ONNX
operators only (opset 18 by default) and runs in onnxruntime or any ONNX runtime; written by
torch.onnx as one file, weights included.  ONNX needs the export extra (onnx, onnxscript, and
onnxruntime for the check): pip install 'stafast[export]'.

After writing, the file's embeddings are compared with PyTorch's on a random batch (ONNX: in
onnxruntime) and the largest difference is printed; --no-verify skips that.
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import cli, ops
from .checkpoint import load_model
from .cli import option
from .extras import require
from .ops._checks import choice

FORMATS = ("onnx", "pt2")
OPSET = 18
# Each stafast op as its reference math, for runtimes that know only standard operators.
REFERENCE_DECOMPOSITIONS = {op.overload: op.spec.forward for op in ops.OPS.values()}


class EmbeddingModel(nn.Module):
    """clips (B, N, 3, H, W) -> L2-normalised embeddings (B, embed_dim): a copy of an STA in eval
    mode without its diversity penalty (a term of the training loss, not of the embedding)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.model.diversity_penalty = None

    def forward(self, clips: Tensor) -> Tensor:
        return self.model(clips).embedding


def export_program(model: nn.Module, frames: int, height: int, width: int) -> torch.export.ExportedProgram:
    """torch.export of EmbeddingModel(model) with a dynamic batch; the stafast ops stay custom ops."""
    example = torch.randn(2, frames, 3, height, width)  # B = 2: a batch of 1 would be specialised
    # "auto": under the reference backend the ops would be traced inline instead of kept as ops.
    with ops.backend("auto"), torch.no_grad():
        return torch.export.export(EmbeddingModel(model), (example,),
                                   dynamic_shapes={"clips": {0: torch.export.Dim("batch")}})


def export(checkpoint: str, fmt: str, output: str, frames: int | None = None, height: int | None = None,
           width: int | None = None, opset: int = OPSET, verify: bool = True) -> dict:
    """Write the embedding model of a stafast.train checkpoint to `output` as `fmt` ("onnx" or "pt2").
    Returns {"output", "format", "input_shape", "max_abs_diff" (None if not verified)}."""
    choice("export", "format", fmt, FORMATS)
    if fmt == "onnx":  # before any work: what writing and checking the file will need
        require("onnx", "export", "--format onnx")
        require("onnxscript", "export", "--format onnx (torch.onnx's exporter)")
        if verify:
            require("onnxruntime", "export", "checking the ONNX file after writing it (or --no-verify)")
    model, state = load_model(checkpoint, "cpu")
    cfg = state["config"]  # the run's TrainConfig
    frames = frames or cfg.frames or model.num_frames
    height, width = height or cfg.height, width or cfg.width
    if not height or not width:
        raise ValueError(f"{checkpoint} does not record the input size: give --height and --width")
    for name, value in (("frames", frames), ("height", height), ("width", width)):
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if model.frame_enhancement is not None and frames != model.num_frames:
        raise ValueError(f"--frames {frames}: the model of {checkpoint} was built for N={model.num_frames} frames "
                         "(its frame enhancement is N x N)")
    program = export_program(model, frames, height, width)
    os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
    if fmt == "pt2":
        torch.export.save(program, output)
    else:
        onnx_program = torch.onnx.export(program.run_decompositions(REFERENCE_DECOMPOSITIONS), dynamo=True,
                                         opset_version=opset, input_names=["clips"], output_names=["embedding"],
                                         external_data=False, verbose=False)
        onnx_program.save(output)
    diff = _verify(model, output, fmt, (3, frames, 3, height, width)) if verify else None
    return {"output": output, "format": fmt, "input_shape": ["B", frames, 3, height, width], "max_abs_diff": diff}


def _verify(model: nn.Module, path: str, fmt: str, shape: tuple) -> float:
    """The largest |exported - PyTorch| over the embeddings of one random batch (ONNX: in onnxruntime)."""
    clips = torch.randn(*shape)
    with torch.no_grad():
        want = EmbeddingModel(model)(clips)
        if fmt == "pt2":
            got = torch.export.load(path).module()(clips)
        else:
            import onnxruntime
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"clips": clips.numpy()})[0])
    return float((got - want).abs().max())


@dataclass(kw_only=True)
class ExportConfig:
    checkpoint: str = option(help="a stafast.train checkpoint.pt")
    format: str = option(help="onnx: standard operators; pt2: torch.export with the stafast ops", choices=FORMATS)
    output: str = option(help="the file to write (.onnx or .pt2)")
    frames: int | None = option(None, "N frames per clip (default: the checkpoint's)")
    height: int | None = option(None, "input height (default: the checkpoint's training size)")
    width: int | None = option(None, "input width (default: the checkpoint's training size)")
    opset: int = option(OPSET, "ONNX opset")
    verify: bool = option(True, "compare the file's embeddings with PyTorch's on a random batch after writing")


def main(argv=None) -> dict:
    a = cli.parse(ExportConfig, argv, module="stafast.export", description=__doc__)
    try:
        result = export(a.checkpoint, a.format, a.output, a.frames, a.height, a.width, a.opset, a.verify)
    except cli.EXPECTED:
        raise  # bad data or checkpoint: cli.run's one line
    except (FileNotFoundError, ValueError) as e:
        cli.error(ExportConfig, "stafast.export", str(e))
    diff = result["max_abs_diff"]
    checked = "" if diff is None else f"; max |exported - PyTorch| = {diff:.2e} on a random batch of 3"
    print(f"wrote {a.output} ({a.format}, clips (B, {', '.join(map(str, result['input_shape'][1:]))}) -> "
          f"embeddings){checked}", file=sys.stderr)
    return result


if __name__ == "__main__":
    cli.run(main, "stafast.export")
