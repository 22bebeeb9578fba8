"""Optional dependencies: where each is first needed, a missing one (simulated: None in sys.modules,
which makes its import fail) stops with one message naming the pip extra that installs it."""
import ast
import os
import re
import runpy
import sys

import pytest
import torch

from stafast import extras
from stafast.extras import EXTRAS, MissingExtra, require


def missing(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def extra_message(extra: str) -> str:
    """The end of the message, as a regular expression."""
    return re.escape(f": pip install 'stafast[{extra}]'") + "$"


@pytest.mark.parametrize("module, extra", [("faiss", "search"), ("h5py", "hdf5"), ("onnx", "export"),
                                           ("nvidia.dali", "dali"), ("av", "video"), ("tensorboard", "tensorboard")])
def test_require_names_what_needs_it_and_the_extra(monkeypatch, module, extra):
    missing(monkeypatch, module)
    with pytest.raises(MissingExtra, match=rf"^searching needs the module {module}, which cannot be imported "
                                           rf"\(.*\): pip install 'stafast\[{extra}\]'$") as e:
        require(module, extra, "searching")
    assert isinstance(e.value, ImportError) and e.value.name == module
    assert extra in EXTRAS


def test_require_returns_the_module_and_knows_its_extras():
    assert require("json", "export", "x") is sys.modules["json"]
    with pytest.raises(KeyError, match="unknown extra 'exports'"):
        require("json", "exports", "x")


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_export_onnx_without_the_export_extra(monkeypatch, tmp_path, module):
    from stafast import export
    missing(monkeypatch, module)
    with pytest.raises(MissingExtra, match=extra_message("export")):  # before reading the checkpoint
        export.export(str(tmp_path / "none.pt"), "onnx", str(tmp_path / "x.onnx"))
    if module == "onnxruntime":  # only the check of the written file needs it
        with pytest.raises(FileNotFoundError, match="none.pt does not exist"):
            export.export(str(tmp_path / "none.pt"), "onnx", str(tmp_path / "x.onnx"), verify=False)


def test_video_without_the_video_extra(monkeypatch, tmp_path):
    from stafast.data import video
    missing(monkeypatch, "av")
    (tmp_path / "a.mp4").write_bytes(b"")
    with pytest.raises(MissingExtra, match=rf"reading the video {tmp_path}/a.mp4 needs the module av.*"
                                           + extra_message("video")):
        video.probe(str(tmp_path / "a.mp4"))


def test_dali_pipeline_without_the_dali_extra(monkeypatch):
    from stafast.data import ClipPlan, Tracklet, build_loader
    missing(monkeypatch, "nvidia.dali")
    plan = ClipPlan([Tracklet(("f0.jpg", "f1.jpg"), 0, 0)], 2, "test")
    with pytest.raises(MissingExtra, match="--pipeline dali needs the module nvidia.dali.*" + extra_message("dali")):
        build_loader(plan, 1, 32, 16, pipeline="dali", workers=0)


def test_tensorboard_without_its_extra_warns_and_training_goes_on(monkeypatch, tmp_path):
    from stafast import train
    missing(monkeypatch, "tensorboard", "torch.utils.tensorboard")
    with pytest.warns(UserWarning, match=r"^writing TensorBoard scalars needs the module tensorboard.*"
                                         r"pip install 'stafast\[tensorboard\]'; training goes on, metrics.json is "
                                         "still written$"):
        assert train.open_writer(str(tmp_path), None) is None
    assert torch.utils is sys.modules["torch.utils"]  # nothing else was taken away


def test_setup_installs_these_extras_and_tests_with_all_but_dali():
    """setup.py's extras() (run alone: setup.py itself would run setuptools) returns EXTRAS and "test"."""
    path = os.path.join(os.path.dirname(os.path.dirname(extras.__file__)), "setup.py")
    tree = ast.parse(open(path).read())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "extras")
    scope = {"os": os, "runpy": runpy, "HERE": os.path.dirname(path)}
    exec(compile(ast.Module([function], []), path, "exec"), scope)
    got = scope["extras"]()
    assert {k: v for k, v in got.items() if k != "test"} == EXTRAS
    assert set(got["test"]) == {"pytest", "pytest-benchmark"} | {r for k, v in EXTRAS.items() if k != "dali" for r in v}
