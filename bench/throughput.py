"""Training throughput on one device: the step alone, the data pipeline alone, both together, evaluation.

    python bench/throughput.py --out bench/results/gpu            # on a GPU: the paper's settings
    python bench/throughput.py --dry-run --out /tmp/dry            # CPU, toy sizes: every section runs

GPU, the paper's settings: ResNet-50, bf16 autocast, channels_last, 256x128 clips, B = 32 clips
(8 ids x 4) x N = 6 frames, OIM over 625 ids (MARS), K = 6 heads.  --dry-run: ResNet-18, fp32,
64x32, B = 4 x N = 3, a few steps, so that the script runs end to end on a CPU in a minute
(CI runs it through `bash bench/gpu_check.sh --dry-run`); its figures mean nothing.

Sections of throughput.json (and the table in throughput.md):
  step        clips/s of the training step alone (stafast.train.train_step, the batch already on
              the device), for stage 3 (CNN frozen) and stage 4 (whole network): eager (the
              reference ops in plain PyTorch), fused (the stafast ops on the device's fastest
              backend) and compile (--compile: torch.compile of the model, fused ops opaque)
  data        clips/s of the frame pipelines alone on JPEG tracklets written at the clip size:
              DALI ("mixed" nvJPEG decoding on a GPU) and the torch DataLoader, same workers
  end_to_end  clips/s of stage 4 with the pipeline feeding the step (the training loop without
              its logging), and whether data is the bottleneck
  eval        frames/s of evaluation feature extraction (stafast.evaluate.extract, test sampling)

Rates are clips (or frames) over the wall time of a run of steps after warm-up, with the device
synchronised at both ends; each is the median of --repeats runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from stafast import ops
from stafast import train as T
from stafast.config import TrainConfig
from stafast.data import MARS, ClipPlan, build_loader, dali_available, synth
from stafast.evaluate import extract

SECTIONS = ("step", "data", "end_to_end", "eval")


@dataclasses.dataclass
class Settings:
    arch: str
    height: int
    width: int
    ids_per_batch: int
    tracklets_per_id: int
    frames: int
    amp: str
    num_classes: int         # ids the identity loss classifies (MARS: 625)
    data_ids: int            # training ids of the generated JPEG set (an epoch: data_ids / ids_per_batch batches)
    epochs: int              # epochs of that set per timed data / end-to-end run
    warmup: int              # steps before timing (compile happens here)
    steps: int               # timed steps per run
    repeats: int
    eval_batch: int
    eval_tracklets: int      # tracklets per timed evaluation run (the gallery, repeated)
    compile_backend: str     # torch.compile's backend for the compile variant

    @property
    def batch(self) -> int:
        return self.ids_per_batch * self.tracklets_per_id


GPU = Settings("resnet50", 256, 128, 8, 4, 6, "bf16", 625, data_ids=128, epochs=6, warmup=10, steps=50, repeats=3,
               eval_batch=64, eval_tracklets=1024, compile_backend="inductor")
# The dry run compiles with aot_eager (dynamo + AOT autograd tracing, no code generation): CPU
# inductor would take minutes on 2 cores and generates other code than on a GPU anyway.
DRY = Settings("resnet18", 64, 32, 2, 2, 3, "none", 8, data_ids=4, epochs=1, warmup=1, steps=2, repeats=1,
               eval_batch=4, eval_tracklets=8, compile_backend="aot_eager")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device: torch.device, repeats: int) -> float:
    """Median seconds of run() over `repeats`, synchronised at both ends."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def config(s: Settings, **overrides) -> TrainConfig:
    return TrainConfig.create("mars", root="unused", arch=s.arch, height=s.height, width=s.width, frames=s.frames,
                              ids_per_batch=s.ids_per_batch, tracklets_per_id=s.tracklets_per_id, amp=s.amp,
                              stages=(4,), epochs=(1,), **overrides)


def make_stage(s: Settings, cfg: TrainConfig, stage: int, device: torch.device) -> T.Stage:
    st = T.build_trainable(cfg, stage, s.num_classes, device, compile_backend=s.compile_backend)
    st.train_mode()
    return st


def amp_dtype(cfg: TrainConfig, device: torch.device):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if device.type == "cuda" else None


def ran_text(ran: dict) -> str:
    """The backends that ran the stafast ops (ops.backends_ran()); none: the reference, inline in the model."""
    return "+".join(sorted(set(ran.values()))) or "reference"


def variant_backend(variant: str) -> str:
    return "reference" if variant == "eager" else "auto"


def bench_step(s: Settings, device: torch.device, stage: int, variant: str) -> dict:
    """(a) the training step alone on a random batch already on the device."""
    cfg = config(s, compile=variant == "compile", backend=variant_backend(variant))
    with ops.backend(cfg.backend):
        st = make_stage(s, cfg, stage, device)
        clips = torch.randn(s.batch, s.frames, 3, s.height, s.width, device=device)
        pids = torch.arange(s.batch, device=device) // s.tracklets_per_id
        dtype = amp_dtype(cfg, device)

        def steps(n):
            for _ in range(n):
                T.train_step(st, clips, pids, cfg.diversity_weight, dtype)

        t0 = time.perf_counter()
        steps(s.warmup)
        sync(device)
        warm = time.perf_counter() - t0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with ops.backends_ran() as ran:
            seconds = timed(lambda: steps(s.steps), device, s.repeats)
        means, bad, _ = st.meter.read()
    row = {"stage": stage, "variant": variant, "backend": ran_text(ran), "backends_ran": dict(ran),
           "clips_per_s": s.steps * s.batch / seconds, "ms_per_step": 1e3 * seconds / s.steps, "warmup_s": warm,
           "loss": means["loss"], "non_finite_steps": bad}
    if device.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def jpeg_set(s: Settings, folder: str) -> MARS:
    """A MARS-layout JPEG set at the clip size (256x128 on GPU), generated once into `folder`."""
    root = os.path.join(folder, f"mars-{s.data_ids}ids-{s.height}x{s.width}")
    if not os.path.isdir(os.path.join(root, "info")):
        tmp = tempfile.mkdtemp(dir=folder, prefix=".gen-")
        synth.make_mars(tmp, ids=s.data_ids, test_ids=max(2, s.data_ids // 4), cameras=3, tracklets=2,
                        frames=(12, 24), size=(s.height, s.width), seed=0)
        os.rename(tmp, root)
    return MARS(root)


def train_plan(s: Settings, dataset: MARS) -> ClipPlan:
    return ClipPlan(dataset.train, s.frames, "train", seed=0, ids_per_batch=s.ids_per_batch,
                    tracklets_per_id=s.tracklets_per_id)


def bench_data(s: Settings, dataset: MARS, device: torch.device, pipeline: str, workers: int) -> dict:
    """(b) a frame pipeline alone: whole epochs, the clips landing on the device."""
    loader = build_loader(train_plan(s, dataset), s.batch, s.height, s.width, pipeline=pipeline, workers=workers,
                          device=str(device))
    epoch = [0]

    def epochs(n):
        for _ in range(n):
            loader.set_epoch(epoch[0])
            epoch[0] += 1
            for batch in loader:
                batch["clips"].to(device, non_blocking=True)

    t0 = time.perf_counter()
    epochs(1)  # start-up: worker processes, pipeline build
    warm = time.perf_counter() - t0
    seconds = timed(lambda: epochs(s.epochs), device, s.repeats)
    clips = s.epochs * len(loader) * s.batch
    return {"pipeline": pipeline, "workers": workers, "clips_per_run": clips, "clips_per_s": clips / seconds,
            "startup_s": warm}


def bench_end_to_end(s: Settings, dataset: MARS, device: torch.device, pipeline: str, workers: int,
                     variant: str) -> dict:
    """(c) stage 4 fed by the pipeline: the training loop's work per batch, without its logging."""
    cfg = config(s, compile=variant == "compile", backend=variant_backend(variant))
    loader = build_loader(train_plan(s, dataset), s.batch, s.height, s.width, pipeline=pipeline, workers=workers,
                          device=str(device))
    dtype = amp_dtype(cfg, device)
    epoch = [0]
    with ops.backend(cfg.backend):
        st = make_stage(s, cfg, 4, device)

        def epochs(n):
            for _ in range(n):
                loader.set_epoch(epoch[0])
                epoch[0] += 1
                for batch in loader:
                    clips = batch["clips"].to(device, non_blocking=True)
                    pids = batch["pids"].to(device, non_blocking=True)
                    T.train_step(st, clips, pids, cfg.diversity_weight, dtype)

        epochs(1)  # warm-up (and compilation)
        with ops.backends_ran() as ran:
            seconds = timed(lambda: epochs(s.epochs), device, s.repeats)
        st.meter.read()
    clips = s.epochs * len(loader) * s.batch
    return {"pipeline": pipeline, "workers": workers, "variant": variant, "backend": ran_text(ran),
            "backends_ran": dict(ran), "clips_per_run": clips, "clips_per_s": clips / seconds}


def bench_eval(s: Settings, dataset: MARS, device: torch.device, pipeline: str, workers: int) -> dict:
    """(d) evaluation features of the gallery (repeated to eval_tracklets, so that the pipeline's
    start-up, which a real gallery of thousands of tracklets amortises, weighs little): N frames
    per tracklet (test sampling)."""
    cfg = config(s)
    model = T.build_trainable(cfg, 4, s.num_classes, device).model
    dtype = amp_dtype(cfg, device)
    tracklets = (dataset.gallery * -(-s.eval_tracklets // len(dataset.gallery)))[:s.eval_tracklets]

    def run():
        extract(model, tracklets, s.frames, s.height, s.width, batch_size=s.eval_batch, pipeline=pipeline,
                workers=workers, device=str(device), amp_dtype=dtype, progress=False)

    run()  # warm-up
    seconds = timed(run, device, s.repeats)
    frames = len(tracklets) * s.frames
    return {"pipeline": pipeline, "workers": workers, "batch": s.eval_batch, "tracklets": len(tracklets),
            "frames_per_s": frames / seconds, "clips_per_s": len(tracklets) / seconds}


def verdict(step: float, data: float, e2e: float) -> dict:
    """Data is the bottleneck when the pipeline alone is slower than the step alone, or when feeding
    the step costs it more than 10% of its rate."""
    bound = data < step or e2e < 0.9 * step
    why = (f"the pipeline alone gives {data:.0f} clips/s, the step alone {step:.0f}, both together {e2e:.0f} "
           f"({100 * e2e / step:.0f}% of the step alone)")
    return {"data_is_bottleneck": bound, "explanation": ("data IS the bottleneck: " if bound else
                                                         "data is not the bottleneck: ") + why}


def environment(device: torch.device) -> dict:
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
           f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
           "backends": ops.available_backends(device), "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name in ("triton", "torchvision"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    env["dali"] = __import__("nvidia.dali", fromlist=["__version__"]).__version__ if dali_available() else None
    return env


def table(result: dict) -> str:
    s, env = result["settings"], result["environment"]
    lines = [f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}, DALI {env['dali']}; "
             f"{env['cpus']} CPUs; {env['date']}.",
             f"Settings: {s['arch']}, B = {s['ids_per_batch'] * s['tracklets_per_id']} clips x N = {s['frames']}, "
             f"{s['height']}x{s['width']}, amp {s['amp']}{', channels_last' if result['device_type'] == 'cuda' else ''}; "
             f"{s['steps']} steps x {s['repeats']} runs after {s['warmup']} warm-up steps (median)"
             + (" -- DRY RUN, toy sizes: the figures mean nothing" if result["dry_run"] else "") + ".", "",
             "| (a) training step alone | eager | fused | compile |", "| --- | ---: | ---: | ---: |"]
    for stage in (3, 4):
        rows = {r["variant"]: r for r in result["step"] if r["stage"] == stage}
        cells = [f"{rows[v]['clips_per_s']:.1f} clips/s ({rows[v]['ms_per_step']:.1f} ms)" if v in rows else "-"
                 for v in ("eager", "fused", "compile")]
        lines.append(f"| stage {stage} ({'CNN frozen' if stage == 3 else 'whole network'}) | " + " | ".join(cells) + " |")
    lines += ["", "| (b) data pipeline alone | workers | clips/s |", "| --- | ---: | ---: |"]
    lines += [f"| {r['pipeline']} | {r['workers']} | {r['clips_per_s']:.1f} |" for r in result["data"]]
    e = result.get("end_to_end")
    if e:
        lines += ["", "| (c) stage 4, pipeline + step | clips/s |", "| --- | ---: |",
                  f"| {e['pipeline']} + {e['variant']} step | {e['clips_per_s']:.1f} |", "", e["explanation"] + "."]
    if result.get("eval"):
        lines += ["", "| (d) evaluation features | batch | frames/s |", "| --- | ---: | ---: |",
                  f"| {result['eval']['pipeline']} | {result['eval']['batch']} | {result['eval']['frames_per_s']:.1f} |"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check that every section runs")
    p.add_argument("--out", default="bench/results/gpu", help="folder for throughput.json and throughput.md")
    p.add_argument("--data", help="folder for the generated JPEG set (default: stafast-throughput in the temporary "
                                  "folder, never OUT: some 17,000 files at the GPU settings)")
    p.add_argument("--workers", type=int, default=None, help="data workers (default: min(8, CPUs))")
    p.add_argument("--variants", nargs="+", default=["eager", "fused", "compile"], choices=["eager", "fused", "compile"])
    p.add_argument("--stages", nargs="+", type=int, default=[3, 4], choices=[3, 4], help="training stages to step")
    p.add_argument("--pipelines", nargs="+", choices=["dali", "torch"],
                   help="frame pipelines (default: DALI when installed, and torch)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                   help="sections to measure (end_to_end needs step with stage 4, and data)")
    p.add_argument("--jsonl", help="also append each row as a JSON line to this file as soon as it is measured")
    a = p.parse_args(argv)
    if "end_to_end" in a.sections and not ({"step", "data"} <= set(a.sections) and 4 in a.stages):
        p.error("--sections end_to_end needs step (with --stages 4) and data")
    if "dali" in (a.pipelines or []) and not dali_available():
        p.error("--pipelines dali: nvidia-dali is not installed (pip install -e .[dali]; on the GPU machine "
                "scripts/gpu_wheels.sh)")
    device = torch.device("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not a.dry_run:
        p.error("no GPU here: the paper's settings take minutes per step on a CPU; use --dry-run")
    s = DRY if a.dry_run else GPU
    workers = a.workers or min(8, os.cpu_count() or 2)
    os.makedirs(a.out, exist_ok=True)
    data_folder = a.data or os.path.join(tempfile.gettempdir(), "stafast-throughput")
    os.makedirs(data_folder, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    result = {"dry_run": a.dry_run, "device_type": device.type, "environment": environment(device),
              "settings": dataclasses.asdict(s), "step": [], "data": []}

    def say(msg):
        print(f"[throughput] {msg}", file=sys.stderr, flush=True)

    def keep(section: str, row: dict) -> None:
        """Records a row at once (a run stopped at a time limit keeps what it measured)."""
        if section in ("step", "data"):
            result[section].append(row)
        else:
            result[section] = row
        with open(os.path.join(a.out, "throughput.json"), "w") as f:
            json.dump(result, f, indent=2)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps({"kind": "throughput", "section": section, **row}) + "\n")

    if "step" in a.sections:
        for stage in a.stages:
            for variant in a.variants:
                keep("step", bench_step(s, device, stage, variant))
                r = result["step"][-1]
                say(f"step stage {stage} {variant}: {r['clips_per_s']:.1f} clips/s (warm-up {r['warmup_s']:.1f} s)")
    pipelines = a.pipelines or (["dali"] if dali_available() else []) + ["torch"]
    dataset = None
    if {"data", "eval"} & set(a.sections):
        t0 = time.perf_counter()
        dataset = jpeg_set(s, data_folder)
        say(f"JPEG set in {data_folder}: {len(dataset.train)} training tracklets ({time.perf_counter() - t0:.0f} s)")
    if "data" in a.sections:
        for pipeline in pipelines:
            keep("data", bench_data(s, dataset, device, pipeline, workers))
            say(f"data {pipeline}: {result['data'][-1]['clips_per_s']:.1f} clips/s")
    best_data = max(result["data"], key=lambda r: r["clips_per_s"]) if result["data"] else {"pipeline": pipelines[0]}
    if "end_to_end" in a.sections:
        best_step = max((r for r in result["step"] if r["stage"] == 4), key=lambda r: r["clips_per_s"])
        e2e = bench_end_to_end(s, dataset, device, best_data["pipeline"], workers, best_step["variant"])
        e2e.update(verdict(best_step["clips_per_s"], best_data["clips_per_s"], e2e["clips_per_s"]))
        keep("end_to_end", e2e)
        say(f"end to end: {e2e['clips_per_s']:.1f} clips/s; {e2e['explanation']}")
    if "eval" in a.sections:
        keep("eval", bench_eval(s, dataset, device, best_data["pipeline"], workers))
        say(f"eval: {result['eval']['frames_per_s']:.1f} frames/s")
    missing = [k for k in a.sections if not result.get(k)]
    if missing:
        raise RuntimeError(f"throughput: sections {missing} are empty")
    with open(os.path.join(a.out, "throughput.md"), "w") as f:
        f.write(table(result) + "\n")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
