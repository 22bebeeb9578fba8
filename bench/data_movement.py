"""Data movement of the Triton kernels: bytes each kernel reads and writes, against its op's minimum.

    python bench/data_movement.py [--shape paper|l128|large|K=6,L=32,N=6,D=2048,B=32 ...] [--dtype bf16]
                                  [--json FILE] [--markdown]

The ops run through the Triton interpreter (TRITON_INTERPRET=1, set here) on random CPU tensors,
and every element that a kernel's tl.load or tl.store touches is counted (lanes masked off are
not; lanes of one load that share an address count once, as the GPU coalesces them), per kernel
and per tensor. The same launchers run on the GPU, so the counts are the GPU's load/store
requests (what reaches DRAM can be less: repeated reads of small tensors hit L2).
The interpreter runs the first autotune config that survives pruning; the table names it.
Columns: counted bytes, the op's minimum (every input read once, every output written once),
their ratio, programs against the H100's 132 SMs, and the time the counted bytes take at the
H100's measured copy bandwidth (3.0 TB/s, ../shared/docs/gpu.md).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton and stafast.kernels are imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from stafast import kernels  # noqa: E402
from stafast.kernels import _common  # noqa: E402

H100_SMS = 132
H100_COPY_BYTES_PER_S = 3.0e12
SHAPES = {"paper": "K=6,L=32,N=6,D=2048,B=32", "l128": "K=6,L=128,N=6,D=2048,B=32",
          "large": "K=16,L=1024,N=32,D=4096,B=2"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Counter:
    """Counts the bytes of the interpreter's loads and stores, by tensor (address range)."""

    def __init__(self):
        self.read: dict[int, int] = {}
        self.written: dict[int, int] = {}
        self.tensors: list[tuple[int, int, int]] = []  # (start, end, index)

    def watch(self, tensors: list[torch.Tensor]) -> None:
        self.tensors = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), i)
                              for i, t in enumerate(tensors) if t.numel())
        self.read, self.written = {}, {}

    def add(self, table: dict, ptrs, mask, dtype) -> None:
        # Lanes of one tl.load/tl.store that share an address are one request (the GPU coalesces
        # them): the kernels read padded rows from clamped, repeated addresses.
        addresses = np.unique(ptrs.data[mask.data] if mask is not None else ptrs.data)
        size = max(1, dtype.primitive_bitwidth // 8)
        addresses = addresses.astype(np.uint64)
        starts = np.array([s for s, _, _ in self.tensors], dtype=np.uint64)
        ends = np.array([e for _, e, _ in self.tensors], dtype=np.uint64)
        slot = np.searchsorted(starts, addresses, side="right") - 1
        inside = (slot >= 0) & (addresses < ends[np.maximum(slot, 0)]) if len(self.tensors) else slot < -1
        owner = np.where(inside, slot, -1)
        for s, count in zip(*np.unique(owner, return_counts=True)):
            index = self.tensors[s][2] if s >= 0 else -1
            table[index] = table.get(index, 0) + int(count) * size

    def install(self) -> None:
        builder = interpreter.InterpreterBuilder
        load, store = builder.create_masked_load, builder.create_masked_store
        counter = self

        def counted_load(self, ptrs, mask, other, *args, **kwargs):
            counter.add(counter.read, ptrs, mask, ptrs.get_element_ty())
            return load(self, ptrs, mask, other, *args, **kwargs)

        def counted_store(self, ptrs, value, mask, *args, **kwargs):
            counter.add(counter.written, ptrs, mask, ptrs.get_element_ty())
            return store(self, ptrs, value, mask, *args, **kwargs)
        builder.create_masked_load, builder.create_masked_store = counted_load, counted_store


def parse(text: str) -> dict:
    shape = dict(item.split("=") for item in SHAPES.get(text, text).split(","))
    return {k: int(v) for k, v in shape.items()}


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(shape: dict, dtype: torch.dtype) -> list[dict]:
    """One row per kernel launch of the three ops' forward and backward at `shape`."""
    g = torch.Generator().manual_seed(0)

    def rand(*size, dtype):
        return torch.randn(*size, generator=g).to(dtype)
    with torch.no_grad():  # the launchers, called directly: (op stage, call, its inputs)
        ops = [(stage, functools.partial(launcher, *args), [a for a in args if isinstance(a, torch.Tensor)])
               for stage, launcher, args in kernels.examples(shape, dtype, rand)]
        counter = Counter()
        counter.install()
        rows = []
        for stage, call, inputs in ops:
            launches = []

            def finish():
                if launches and "read" not in launches[-1]:
                    launches[-1].update(read=sum(counter.read.values()), written=sum(counter.written.values()),
                                        by_tensor={i: (counter.read.get(i, 0), counter.written.get(i, 0))
                                                   for i in range(len(counter.tensors))},
                                        unattributed=counter.read.get(-1, 0) + counter.written.get(-1, 0))

            def seen(launch):  # called just before each launch runs
                finish()
                config = launch.configs[0] if launch.configs else None
                grid = launch.grid(launch.constexprs(config)) if callable(launch.grid) else launch.grid
                launches.append(dict(kernel=launch.name, config=_config(config), programs=int(np.prod(grid))))
                counter.watch([a for a in launch.args if isinstance(a, torch.Tensor)])
            with _common.record(seen, H100_SMS, run=True):
                outputs = call()
            finish()
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            minimum = _nbytes(*inputs) + _nbytes(*outputs)
            total = sum(r["read"] + r["written"] for r in launches)
            for r in launches:
                rows.append(dict(stage=stage, dtype=str(dtype).removeprefix("torch."), shape=shape, **r,
                                 op_bytes=total, op_minimum=minimum, op_ratio=total / minimum,
                                 h100_us=(r["read"] + r["written"]) / H100_COPY_BYTES_PER_S * 1e6))
    return rows


def _config(config) -> str:
    return "-" if config is None else ",".join(f"{k}={v}" for k, v in config.kwargs.items()) + \
        f",warps={config.num_warps}"


def markdown(rows: list[dict]) -> str:
    out = ["| shape | dtype | op stage | kernel (config) | read MB | written MB | op total / minimum | programs "
           "(/132 SMs) | us at 3.0 TB/s |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        out.append(f"| {shape} | {r['dtype']} | {r['stage']} | {r['kernel'].split('.')[-1]} ({r['config']}) | "
                   f"{r['read'] / 1e6:.3f} | {r['written'] / 1e6:.3f} | {r['op_ratio']:.3f}x "
                   f"({r['op_bytes'] / 1e6:.2f} / {r['op_minimum'] / 1e6:.2f} MB) | {r['programs']} "
                   f"({r['programs'] / H100_SMS:.1f}) | {r['h100_us']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", action="append", help=f"one of {sorted(SHAPES)} or K=..,L=..,N=..,D=..,B=..")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    # The interpreter's 16-bit values are not exact (bfloat16 tl.dot is garbage, triton issue 11584:
    # the ops' Triton backend refuses it there); which addresses a kernel touches does not depend on them.
    np.seterr(all="ignore")
    rows = [r for s in (a.shape or ["paper"]) for r in measure(parse(s), DTYPES[a.dtype])]
    print(markdown(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
