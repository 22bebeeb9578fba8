"""The command lines: expected errors as one line and exit status 2 (stafast.cli.run), --debug for the
traceback; SIGTERM / SIGINT during training: a checkpoint where it stopped, the command that
resumes it (bit-exact), a second signal ends the process at once, no worker left behind."""
import ast
import importlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from stafast import cli, embed, evaluate, export, train as T, visualize
from stafast.checkpoint import CheckpointError, load_checkpoint
from stafast.data import DatasetError, load_dataset, synth

from .test_data import need_dali
from .test_layout import ROOT
from .test_train import assert_same_weights, final_state

# 8 training ids, 2 per batch: 4 steps in the one epoch
FLAGS = ["--arch", "resnet18", "--heads", "2", "--hidden", "8", "--frames", "3", "--height", "32", "--width", "16",
         "--ids-per-batch", "2", "--tracklets-per-id", "2", "--pipeline", "torch", "--lr", "0.01", "--epochs", "1",
         "--deterministic", "--no-eval", "--loss", "oim"]


@pytest.fixture(scope="module")
def root8(tmp_path_factory):
    return synth.make_mars(str(tmp_path_factory.mktemp("eight")), ids=8, test_ids=3, cameras=2, tracklets=2,
                           frames=(3, 6), size=(32, 16), seed=0)


@pytest.fixture(scope="module")
def reference(root8, tmp_path_factory):
    """The run never stopped: its final checkpoint (also the checkpoint the error tests read)."""
    out = tmp_path_factory.mktemp("full")
    T.main(["--dataset", "synthetic", "--root", root8, "--output", str(out), *FLAGS, "--workers", "0"])
    return str(out / "checkpoint.pt")


def one_line_error(capsys, main, module, argv) -> str:
    """What `python -m module argv` prints on an expected error: checked to be one line (and the
    hint), exit status 2, no traceback; returns the message."""
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, module, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "Traceback" not in "\n".join(err), err
    err = err[-2:]  # after what the command printed before the error (a dataset's summary)
    prefix = f"python -m {module}: error: "
    assert err[0].startswith(prefix) and err[1] == "  (the traceback: add --debug or set STAFAST_DEBUG=1)"
    return err[0][len(prefix):]


def test_expected_errors_are_one_line_naming_what_and_where(root8, reference, tmp_path, capsys):
    ckpt = reference
    missing = str(tmp_path / "nothing" / "checkpoint.pt")
    assert one_line_error(capsys, evaluate.main, "stafast.evaluate", ["--dataset", "mars", "--root", str(tmp_path),
                                                                      "--checkpoint", ckpt]) \
        == f"missing MARS info folder: directory {tmp_path}/info does not exist"
    assert one_line_error(capsys, T.main, "stafast.train", ["--dataset", "mars", "--output", str(tmp_path)]) \
        == "--root is required for --dataset mars (the folder holding bbox_train/, bbox_test/ and info/)"
    assert one_line_error(capsys, T.main, "stafast.train", ["--dataset", "mars", "--root", str(tmp_path / "MARS")]) \
        == f"--root {tmp_path}/MARS does not exist (--dataset mars: the folder holding bbox_train/, bbox_test/ and info/)"
    os.makedirs(tmp_path / "mars" / "info")
    assert one_line_error(capsys, T.main, "stafast.train", ["--dataset", "mars", "--root", str(tmp_path / "mars")]) \
        == f"missing MARS name list: {tmp_path}/mars/info/train_name.txt does not exist"
    assert one_line_error(capsys, embed.main, "stafast.embed", ["--checkpoint", missing, "--output", "e.npy", root8]) \
        == f"checkpoint {missing} does not exist (expected a stafast.train checkpoint.pt)"
    data = open(ckpt, "rb").read()
    cut, junk, text = tmp_path / "cut.pt", tmp_path / "junk.pt", tmp_path / "notes.pt"
    cut.write_bytes(data[:len(data) // 2])
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    text.write_text("not a checkpoint\n")
    for bad in (cut, junk, text):
        message = one_line_error(capsys, visualize.main, "stafast.visualize",
                                 ["attention", "--checkpoint", str(bad), "--tracklet", root8])
        assert message.startswith(f"{bad} is not a readable checkpoint (a truncated file, or no torch.save file): ")
        assert bad != cut or message.endswith(": RuntimeError: PytorchStreamReader failed reading zip archive: "
                                              "failed finding central directory")  # without torch's advice
    torch.save([1, 2], tmp_path / "list.pt")
    assert one_line_error(capsys, export.main, "stafast.export", ["--checkpoint", str(tmp_path / "list.pt"), "--format",
                                                                  "pt2", "--output", str(tmp_path / "m.pt2")]) \
        == f"{tmp_path / 'list.pt'} is not a stafast.train checkpoint (keys 'model' and 'model_config' expected)"
    assert one_line_error(capsys, T.main, "stafast.train", ["--output", str(tmp_path / "empty"), "--resume"]) \
        == f"--resume: checkpoint {tmp_path / 'empty' / 'checkpoint.pt'} does not exist"
    resumed = ["--dataset", "synthetic", "--root", root8, "--output", str(tmp_path), *FLAGS, "--resume", ckpt]
    assert one_line_error(capsys, T.main, "stafast.train", resumed + ["--heads", "3"]) == (
        "--resume: the checkpoint's stage 4 model differs from the one this configuration builds (num_heads: 2 in the "
        "checkpoint, 3 in this run; the settings: heads: 2 in the checkpoint, 3 in this run): resume with the "
        "checkpoint's settings, or train into another --output")
    with pytest.warns(UserWarning, match=rf"^--resume: {ckpt} was written with other settings \(lr: 0.01 in the "
                                         r"checkpoint, 0.02 in this run\); training goes on with this run's"):
        T.main(resumed + ["--lr", "0.02"])  # the other settings: a warning naming each, and training goes on


def test_debug_shows_the_traceback_and_user_errors_keep_their_types(tmp_path, capsys, monkeypatch):
    argv = ["--dataset", "mars", "--root", str(tmp_path), "--output", str(tmp_path)]
    with pytest.raises(DatasetError, match="missing MARS info folder"):
        cli.run(T.main, "stafast.train", argv + ["--debug"])
    monkeypatch.setenv("STAFAST_DEBUG", "1")
    with pytest.raises(DatasetError):
        cli.run(T.main, "stafast.train", argv)
    assert issubclass(DatasetError, ValueError) and issubclass(CheckpointError, ValueError)
    with pytest.raises(FileNotFoundError):  # a missing checkpoint is still a FileNotFoundError
        load_checkpoint(str(tmp_path / "none.pt"))
    monkeypatch.delenv("STAFAST_DEBUG")
    for argv, message in ((["--stages", "7"], "invalid training configuration: stages=(7,): each must be one of "
                                               "(1, 2, 3, 4)"),
                          (["--pipeline", "foo"], "argument --pipeline: invalid choice: 'foo' (choose from 'auto', "
                                                  "'dali', 'torch')")):
        with pytest.raises(SystemExit) as exit_:  # a bad flag: argparse's error in two lines, not the usage
            cli.run(T.main, "stafast.train", argv)
        assert exit_.value.code == 2 and capsys.readouterr().err.splitlines() == [
            f"python -m stafast.train: error: {message}", "  (the usage: python -m stafast.train --help)"]
    with pytest.raises(SystemExit):
        cli.run(visualize.main, "stafast.visualize", [])
    assert capsys.readouterr().err.startswith("python -m stafast.visualize: error: the following arguments are "
                                              f"required: {{{','.join(visualize.COMMANDS)}}}\n")
    for returned, status in ((1, 1), (None, 0), ({"metrics": 1}, 0)):  # data.check's 1: not the published tree
        with pytest.raises(SystemExit) as exit_:
            cli.run(lambda argv: returned, "stafast.data.check", [])
        assert exit_.value.code == status


KERNELS = os.path.join(os.path.dirname(ROOT), "kernels")  # installed as stafast.kernels


def command_lines() -> dict[str, str]:
    """{module: path} of every module with a command line (a __main__ block)."""
    found = {}
    for top, package in ((ROOT, "stafast"), (KERNELS, "stafast.kernels")):
        for folder, _, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith(".py") and '__name__ == "__main__"' in open(path).read():
                    found[".".join([package, *os.path.relpath(path, top)[:-3].split(os.sep)])] = path
    return found


def test_every_command_line_runs_through_cli_run(capsys):
    """Each module with a command line hands its main to stafast.cli.run (which prints the one-line
    errors), and its --help, from stafast.cli's parser, names `python -m <module>` and lists --debug."""
    clis = command_lines()
    assert {"stafast.train", "stafast.data.synth", "stafast.kernels.aot"} <= set(clis)
    for module, path in clis.items():
        block = next(n for n in ast.parse(open(path).read()).body if isinstance(n, ast.If)
                     and "__main__" in ast.unparse(n.test))
        assert "cli.run(main," in ast.unparse(block), f"{path}: its __main__ block does not call cli.run"
        with pytest.raises(SystemExit):
            importlib.import_module(module).main(["--help"])
        out = capsys.readouterr().out
        assert out.startswith(f"usage: python -m {module} ") and "--debug" in out, (module, out[:200])


def session(sid: int) -> list[int]:
    """The live (not zombie) processes of session `sid`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()  # state ppid pgrp session ...
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(pid))
    return found


def dali_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("nvidia_dali")}


def test_evaluate_through_dali_on_a_corrupt_frame(root8, reference, tmp_path):
    """Issue 25's acceptance command, once (docs/dali-crashes.md has five runs): `python -m
    stafast.evaluate --pipeline dali` over a tree whose first query frame is 300 header bytes + random
    ones, in a DALI batch of 48 frames (before the guards: exit 139 in DALI's parser, workers left
    behind): exit 2, the DatasetError naming the frame in one line, nothing of its session left."""
    need_dali()
    root = shutil.copytree(root8, tmp_path / "D")
    frame = load_dataset("mars", str(root)).query[0].frames[0]
    data = open(frame, "rb").read()
    open(frame, "wb").write(data[:300] + np.random.default_rng(0).integers(0, 256, len(data) - 300, np.uint8).tobytes())
    before = dali_segments()
    with open(tmp_path / "err", "w+") as err:  # a file, not a pipe, which a worker left behind would hold open
        proc = subprocess.Popen([sys.executable, "-m", "stafast.evaluate", "--dataset", "mars", "--root", str(root),
                                 "--checkpoint", reference, "--pipeline", "dali", "--workers", "2"],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        returncode = proc.wait(timeout=300)
    lines = open(tmp_path / "err").read().splitlines()
    assert returncode == 2 and lines[-2:] == [
        f"python -m stafast.evaluate: error: cannot read frame {frame}: UnidentifiedImageError: cannot identify "
        f"image file '{frame}'", "  (the traceback: add --debug or set STAFAST_DEBUG=1)"], (returncode, lines[-20:])
    assert gone(session(proc.pid)) and not dali_segments() - before


# ---------------------------------------------------------------------------------------- signals
REPORTING = """
import sys
import stafast.train as T
from stafast import cli
step = T.train_step

def reported(*args, **kwargs):  # a line per step, for the test to signal mid-epoch
    out = step(*args, **kwargs)
    print("STEP", flush=True)
    return out

T.train_step = reported
cli.run(T.main, "stafast.train", sys.argv[1:])
"""


def start_training(argv, err_path, **popen):
    """A training subprocess, returned once it has done its first step, with its child processes."""
    proc = subprocess.Popen([sys.executable, "-c", REPORTING, *argv], stdout=subprocess.PIPE, text=True,
                            stderr=open(err_path, "w"), **popen)
    line = proc.stdout.readline()
    assert line == "STEP\n", f"{line!r}\n{open(err_path).read()[-3000:]}"
    children = [int(p) for task in os.listdir(f"/proc/{proc.pid}/task")
                for p in open(f"/proc/{proc.pid}/task/{task}/children").read().split()]
    return proc, children


def gone(pids, within=10.0) -> bool:
    deadline = time.time() + within
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    return not alive


def test_sigterm_mid_epoch_checkpoints_there_and_the_printed_command_resumes_exactly(root8, reference, tmp_path):
    out = tmp_path / "run"
    argv = ["--dataset", "synthetic", "--root", root8, "--output", str(out), *FLAGS, "--workers", "1"]
    proc, children = start_training(argv, tmp_path / "err", start_new_session=True)
    os.killpg(proc.pid, signal.SIGTERM)  # to every process of the job, as a cluster's preemption does
    proc.communicate(timeout=300)
    err = open(tmp_path / "err").read()
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    assert children and gone(children), "the loader's worker outlived the training process"
    state = final_state(out)
    assert state["epoch"] == 0 and 0 < state["step"] < 4 and state["global_step"] == state["step"]  # mid-epoch
    (line,) = [line for line in err.splitlines() if "resume with: " in line]
    assert line.startswith(f"stafast.train: stopped by SIGTERM after global step {state['step']} (stage 4, epoch 1, "
                           f"batch {state['step']} of 4); checkpoint {out / 'checkpoint.pt'}; resume with: python -m "
                           "stafast.train ")
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[-2:] == ["--resume", str(out / "checkpoint.pt")]
    T.main(command[3:])  # the printed command, in this process
    assert_same_weights(torch.load(reference, weights_only=False), final_state(out))


def test_a_second_ctrl_c_ends_training_at_once(root8, tmp_path):
    """Ctrl-C reaches the whole process group (the loader's worker too, which ignores it); the first
    asks for a stop, the second ends the process by SIGINT before the step is done."""
    argv = ["--dataset", "synthetic", "--root", root8, "--output", str(tmp_path / "run"), *FLAGS, "--workers", "1"]
    proc, children = start_training(argv, tmp_path / "err", start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    deadline = time.time() + 60
    while "stopping after the current step" not in open(tmp_path / "err").read() and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=300)
    err = open(tmp_path / "err").read()
    assert proc.returncode == -signal.SIGINT and "Traceback" not in err, (proc.returncode, err[-3000:])
    assert "stafast.train: SIGINT: stopping after the current step, with a checkpoint (SIGINT again stops at once)" in err
    assert "resume with" not in err and children and gone(children)


ORPHAN = """
import multiprocessing as mp, os, sys, threading, time
from stafast.data.workers import start_worker

def worker(ready):
    start_worker()
    threading.Thread(target=lambda: 1 / 0).start()  # while the parent lives: reported
    time.sleep(0.5)
    ready.set()
    while mp.parent_process().is_alive():
        time.sleep(0.01)
    try:  # what multiprocessing's resource sharer does when the dead parent broke its connection
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        sys.excepthook(*sys.exc_info())
    threading.Thread(target=lambda: 1 / 0).start()
    time.sleep(0.5)
    print("worker done", file=sys.stderr, flush=True)

if __name__ == "__main__":
    ready = mp.get_context("spawn").Event()
    mp.get_context("spawn").Process(target=worker, args=(ready,)).start()
    ready.wait(60)
    os._exit(0)  # the parent gone, as a second Ctrl-C ends it
"""


def test_an_orphaned_worker_is_quiet(tmp_path):
    """After the parent's death a worker's exceptions go unreported (the double Ctrl-C test saw
    multiprocessing's resource sharer print a ConnectionResetError traceback from a worker)."""
    (tmp_path / "orphan.py").write_text(ORPHAN)
    with open(tmp_path / "err", "w+") as err:
        subprocess.run([sys.executable, str(tmp_path / "orphan.py")], stderr=err, timeout=120)
    deadline = time.time() + 30
    while "worker done" not in open(tmp_path / "err").read() and time.time() < deadline:
        time.sleep(0.1)
    err = open(tmp_path / "err").read()
    assert err.count("ZeroDivisionError") == 1 and "ConnectionResetError" not in err and "worker done" in err, err


LEFT_RUNNING = """
import sys
from stafast.data import ClipPlan, build_loader, load_dataset
plan = ClipPlan(load_dataset("mars", sys.argv[1]).train, 4, "train", seed=0)
batches = iter(build_loader(plan, 2, 32, 16, pipeline="torch", workers=2))
next(batches)
print("one batch", flush=True)   # then exit with the loader and its workers still running
"""


def test_exit_with_a_loader_still_running_does_not_hang(root8, tmp_path):
    """The workers ignore SIGTERM, multiprocessing's exit SIGTERMs and waits: workers.reap_at_exit
    kills them first, so the exit ends (it hung before)."""
    (tmp_path / "left.py").write_text(LEFT_RUNNING)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "left.py"), str(root8)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its workers (its own session)
        proc.communicate()
        pytest.fail("the process did not exit within 90 s of its last line: its loader's workers held the exit")
    assert proc.returncode == 0 and "one batch" in out and "Traceback" not in err, err


def test_resume_command_replaces_the_resume_flag():
    assert T.resume_command(["--epochs", "3", "--resume", "--lr", "0.1"], "o/checkpoint.pt") == \
        "python -m stafast.train --epochs 3 --lr 0.1 --resume o/checkpoint.pt"
    assert T.resume_command(["--resume", "old.pt", "--root", "my data"], "o/c.pt") == \
        "python -m stafast.train --root 'my data' --resume o/c.pt"
    assert T.resume_command(["--resume=old.pt"], "c.pt") == "python -m stafast.train --resume c.pt"
