"""Compile every Triton kernel of the three ops for a GPU, without one, and report what ptxas says.

    python -m stafast.kernels.aot --arch sm_80,sm_90 --dtype bf16,fp16,fp32,fp64 \
        --shape K=16,L=1024,N=32,D=4096 [--shape ...] [--json FILE] [--jobs 2]

For each shape, arch and dtype, the launchers of stafast.kernels run on meta tensors inside
`_common.record()`: nothing executes, each launch (kernel, grid, arguments, the autotune configs
that survive pruning) is handed over and compiled for the target with triton's own JIT path
(specialisation included), as a launch on that GPU would compile it. For every kernel and config
it prints, and writes as JSON rows, `kernel`, `config`, `arch`, `dtype`, `shape`, `registers`,
`spill_bytes`, `shared_bytes` and `compile_s` (ptxas's report, triton's shared memory request,
the seconds triton.compile took). Works with triton 3.6 and 3.8; needs no GPU and no
TRITON_INTERPRET (the interpreter does not compile).

Shape keys: K heads, L grid cells, N frames per clip, D channels, B clips (default 32; the ops
see M = B x N frames). Launches that compile to the same binary (same kernel, constants,
specialisation, config and arch) are compiled once; their rows say `"reused": true`.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import functools
import io
import json
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget

from stafast import cli
from stafast.cli import option

from . import _common, examples

ARCHS = {"sm_80": (80, 108), "sm_90": (90, 132)}  # capability, SMs (A100, H100)
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}  # bytes per block, with the opt-in
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
DEFAULT_SHAPE = dict(B=32, N=6, K=6, L=32, D=2048)


def parse_shape(text: str) -> dict:
    shape = dict(DEFAULT_SHAPE)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key.strip() not in shape or not value.strip().isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"expected KEY=positive int with KEY in {sorted(shape)}, "
                                             f"got {item!r}")
        shape[key.strip()] = int(value)
    return shape


def shape_name(shape: dict) -> str:
    return ",".join(f"{k}={shape[k]}" for k in ("K", "L", "N", "D", "B"))


def launches(shape: dict, dtype: torch.dtype, sms: int) -> list[tuple[str, _common.Launch]]:
    """(op stage, launch) for every kernel launch of every op's examples (stafast.kernels.examples)."""
    out: list[tuple[str, _common.Launch]] = []
    for stage, launcher, args in examples(shape, dtype, functools.partial(torch.empty, device="meta")):
        with _common.record(lambda launch: out.append((stage, launch)), sms):
            launcher(*args)
    return out


class _Driver:
    """The least of a triton driver that compiling (not launching) needs, for a GPU not present."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def _compiling_for(target: GPUTarget):
    from triton import knobs
    from triton.runtime import driver
    saved = driver._active, knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile
    driver.set_active(_Driver(target))
    knobs.nvidia.dump_ptxas_log = True       # ptxas -v output: registers and spills
    knobs.compilation.always_compile = True  # a cache hit would hide the compile time
    try:
        yield
    finally:
        driver._active, knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile = saved


def _mock(arg):
    return triton.runtime.jit.MockTensor(arg.dtype) if isinstance(arg, torch.Tensor) else arg


def _config_text(config) -> str:
    if config is None:
        return "-"
    kw = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{kw},warps={config.num_warps},stages={config.num_stages}"


def _identity(launch: _common.Launch, config, arch: str) -> tuple:
    """What decides the compiled binary: kernel, constants, argument dtypes and specialisation, config."""
    def spec(a):
        if isinstance(a, torch.Tensor):
            return str(a.dtype)
        if isinstance(a, bool) or not isinstance(a, int):
            return repr(a)
        return ("int", a == 1, a % 16 == 0, abs(a) >= 2**31)
    return (launch.name, tuple(sorted((k, repr(v)) for k, v in launch.constexprs(config).items())),
            tuple(spec(a) for a in launch.args), _config_text(config), arch)


def compile_one(launch: _common.Launch, config, arch: str) -> dict:
    """Compile one launch with one config for `arch`; ptxas's registers and spills, shared memory, time."""
    capability, _ = ARCHS[arch]
    fn = launch.jit_fn
    kwargs = launch.constexprs(config)
    if config is not None:
        kwargs.update(num_warps=config.num_warps, num_stages=config.num_stages)
        if config.maxnreg is not None:
            kwargs["maxnreg"] = config.maxnreg
    log = io.StringIO()
    with _compiling_for(GPUTarget("cuda", capability, 32)), contextlib.redirect_stdout(log):
        fn.device_caches.clear()  # the binder holds the target it was made for
        start = time.perf_counter()
        compiled = fn.warmup(*map(_mock, launch.args), grid=(1,), **kwargs)
        seconds = time.perf_counter() - start
        fn.device_caches.clear()
    text = log.getvalue()

    def number(pattern):
        found = re.search(pattern, text)
        if not found:
            raise RuntimeError(f"aot: no '{pattern}' in the ptxas report of {launch.name}:\n{text}")
        return int(found.group(1))
    return dict(registers=number(r"Used (\d+) registers"), spill_bytes=number(r"(\d+) bytes spill stores")
                + number(r"(\d+) bytes spill loads"), stack_bytes=number(r"(\d+) bytes stack frame"),
                shared_bytes=int(compiled.metadata.shared), compile_s=round(seconds, 3))


def plan(shapes: list[dict], archs: list[str], dtypes: list[str]) -> list[dict]:
    """One row per (shape, arch, dtype, kernel launch, surviving config), not compiled yet."""
    rows = []
    for shape in shapes:
        for arch in archs:
            for dtype in dtypes:
                for stage, launch in launches(shape, DTYPES[dtype], ARCHS[arch][1]):
                    for config in launch.configs or [None]:
                        rows.append(dict(kernel=launch.name, stage=stage, config=_config_text(config), arch=arch,
                                         dtype=dtype, shape=shape_name(shape), grid=_grid(launch, config),
                                         _launch=launch, _config=config))
    return rows


def _grid(launch: _common.Launch, config) -> list[int]:
    grid = launch.grid
    if callable(grid):
        grid = grid({**launch.meta, **(config.kwargs if config else {})})
    return list(grid) + [1] * (3 - len(grid))


_PENDING: list[dict] = []  # rows to compile; forked workers inherit it (kernel objects do not pickle)


def _compile_task(i: int) -> dict:
    row = _PENDING[i]
    return compile_one(row["_launch"], row["_config"], row["arch"])


def run(shapes: list[dict], archs: list[str], dtypes: list[str], jobs: int = 1, out=sys.stdout) -> list[dict]:
    rows = plan(shapes, archs, dtypes)
    first: dict[tuple, int] = {}
    todo = []
    for i, row in enumerate(rows):
        ident = _identity(row["_launch"], row["_config"], row["arch"])
        if ident in first:
            row["reused"] = first[ident]
        else:
            first[ident] = i
            todo.append((i, row))
    print(f"aot: triton {triton.__version__}, {len(rows)} kernel configs, {len(todo)} distinct compiles", file=out)
    _PENDING[:] = [row for _, row in todo]
    if jobs > 1:
        ctx = multiprocessing.get_context("fork")
        with futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            results = list(pool.map(_compile_task, range(len(todo))))
    else:
        results = [_compile_task(i) for i in range(len(todo))]
    _PENDING.clear()
    for (i, row), result in zip(todo, results):
        row.update(result)
    for row in rows:
        if "reused" in row:
            row.update({k: rows[row["reused"]][k] for k in ("registers", "spill_bytes", "stack_bytes",
                                                             "shared_bytes", "compile_s")}, reused=True)
        row.pop("_launch"), row.pop("_config")
        row["triton"] = triton.__version__
    _print(rows, out)
    return rows


def _print(rows: list[dict], out) -> None:
    header = f"{'kernel':44} {'config':40} {'arch':5} {'dtype':5} {'shape':30} {'regs':>4} {'spill':>5} " \
             f"{'shared':>7} {'s':>6}"
    print(header, file=out)
    for r in rows:
        reused = " (reused)" if r.get("reused") else ""
        print(f"{r['kernel']:44} {r['config']:40} {r['arch']:5} {r['dtype']:5} {r['shape']:30} {r['registers']:4d} "
              f"{r['spill_bytes']:5d} {r['shared_bytes']:7d} {r['compile_s']:6.2f}{reused}", file=out)
    worst = max(rows, key=lambda r: r["compile_s"])
    print(f"aot: {sum(r['spill_bytes'] > 0 for r in rows)} configs spill; max registers "
          f"{max(r['registers'] for r in rows)}; max shared {max(r['shared_bytes'] for r in rows)} B; slowest compile "
          f"{worst['compile_s']:.2f} s ({worst['kernel']} {worst['config']} {worst['arch']} {worst['dtype']})",
          file=out)


@dataclass(kw_only=True)
class AotConfig:
    arch: tuple[str, ...] = option(("sm_80", "sm_90"), f"the GPUs to compile for, of {sorted(ARCHS)}",
                                   metavar="ARCH[,...]")
    dtype: tuple[str, ...] = option(("bf16", "fp32"), f"the input dtypes, of {sorted(DTYPES)}",
                                    metavar="DTYPE[,...]")
    shape: tuple[dict, ...] | None = option(None, f"the op sizes, repeatable; missing keys from {DEFAULT_SHAPE}",
                                            action="append", type=parse_shape, metavar="K=..,L=..,N=..,D=..[,B=..]")
    json: str | None = option(None, "write the rows to this file")
    jobs: int | None = option(None, "compile in this many processes (default: one per CPU)")

    def __post_init__(self):
        for value, known, flag in ((self.arch, ARCHS, "--arch"), (self.dtype, DTYPES, "--dtype")):
            bad = [v for v in value if v not in known]
            if bad:
                raise ValueError(f"{flag}: unknown {bad}; expected some of {sorted(known)}")


def main(argv=None) -> int:
    a = cli.parse(AotConfig, argv, module="stafast.kernels.aot", description=__doc__)
    if _common.INTERPRET:
        cli.error(AotConfig, "stafast.kernels.aot",
                  "TRITON_INTERPRET is set: the interpreter does not compile; unset it to compile for a GPU")
    rows = run(list(a.shape or [dict(DEFAULT_SHAPE)]), list(a.arch), list(a.dtype), jobs=a.jobs or os.cpu_count() or 1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    cli.run(main, "stafast.kernels.aot")
