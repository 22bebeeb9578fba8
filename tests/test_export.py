"""python -m stafast.export: ONNX (standard operators, onnxruntime) and pt2 (torch.export with the
stafast ops kept), on a checkpoint of a few training steps."""
import pytest
import torch

from stafast import export as X
from stafast import cli, ops
from stafast import train as T
from stafast.checkpoint import load_model

from .test_train import TINY, tiny_root  # noqa: F401  (the tiny synthetic set, a module fixture)

STAFAST_OPS = {"stafast.spatial_softmax_pool.default", "stafast.frame_attention.default"}


@pytest.fixture(scope="module")
def checkpoint(tiny_root, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("trained")
    T.main(["--dataset", "synthetic", "--root", tiny_root, "--output", str(out), *TINY, "--epochs", "1",
            "--max-steps", "2", "--no-eval"])
    return str(out / "checkpoint.pt")


def pytorch_embeddings(checkpoint, clips):
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(clips).embedding


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_for_batches_of_1_and_3(checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "sta.onnx")
    result = X.main(["--checkpoint", checkpoint, "--format", "onnx", "--output", path])
    assert result["max_abs_diff"] < 1e-4 and result["input_shape"] == ["B", 3, 3, 32, 16]
    graph = onnx.load(path)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [X.OPSET]
    assert {n.domain for n in graph.graph.node} <= {""}, "only standard ONNX operators"
    assert not any("stafast" in n.op_type.lower() for n in graph.graph.node)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch dimension
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["clips"]
    for batch in (1, 3):
        clips = torch.randn(batch, 3, 3, 32, 16)
        got = session.run(["embedding"], {"clips": clips.numpy()})[0]
        assert got.shape == (batch, 128)
        torch.testing.assert_close(torch.from_numpy(got), pytorch_embeddings(checkpoint, clips), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_pt2_keeps_the_stafast_ops_and_a_dynamic_batch(checkpoint, tmp_path):
    path = str(tmp_path / "sta.pt2")
    result = X.main(["--checkpoint", checkpoint, "--format", "pt2", "--output", path])
    assert result["max_abs_diff"] < 1e-5
    program = torch.export.load(path)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert STAFAST_OPS <= targets, targets
    assert "stafast.diversity_penalty.default" not in targets  # training-only: left out
    for batch, backend in ((1, "auto"), (3, "reference")):  # the ops run on the backend chosen at run time
        clips = torch.randn(batch, 3, 3, 32, 16)
        with ops.backend(backend):
            got = program.module()(clips)
        torch.testing.assert_close(got, pytorch_embeddings(checkpoint, clips), rtol=0, atol=1e-5)


def test_bad_inputs_give_clear_errors(checkpoint, tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(SystemExit):  # as python -m stafast.export runs it: the error in a line
        cli.run(X.main, "stafast.export", ["--checkpoint", missing, "--format", "onnx", "--output", str(tmp_path / "x.onnx")])
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        X.main(["--checkpoint", checkpoint, "--format", "tflite", "--output", str(tmp_path / "x.tflite")])
    assert "invalid choice: 'tflite' (choose from 'onnx', 'pt2')" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"export: format must be one of \('onnx', 'pt2'\), got 'tflite'"):
        X.export(checkpoint, "tflite", str(tmp_path / "x.tflite"))
    with pytest.raises(ValueError, match=r"--frames 4: .* built for N=3 frames"):
        X.export(checkpoint, "pt2", str(tmp_path / "x.pt2"), frames=4)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "not_a_checkpoint.pt")
    with pytest.raises(ValueError, match="is not a stafast.train checkpoint"):
        X.export(str(tmp_path / "not_a_checkpoint.pt"), "onnx", str(tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.pt2").exists()
