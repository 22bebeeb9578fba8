"""bench/harness.py fails a benchmark row whose stafast ops ran on another backend than it names."""
import os
import sys

import pytest
import torch._functorch.config as functorch_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
_donated = functorch_config.donated_buffer
from harness import check_backends  # noqa: E402
functorch_config.donated_buffer = _donated  # the harness turns it off for its benchmarks, not for the tests

EXT = {"spatial_softmax_pool": "ext", "spatial_softmax_pool_backward": "ext"}
REFERENCE = {"spatial_softmax_pool": "reference", "spatial_softmax_pool_backward": "reference"}


@pytest.mark.parametrize("impl, ran, named", [
    ("ext", EXT, "ext"), ("eager", {}, "reference"), ("eager", REFERENCE, "reference"),
    ("compile", {}, "reference"), ("fused", EXT, "ext"), ("copy", {}, None)])
def test_a_row_names_what_ran(impl, ran, named):
    assert check_backends(impl, ran, "group") == named


@pytest.mark.parametrize("impl, ran", [
    ("triton", EXT), ("ext", {}), ("ext", {**EXT, "spatial_softmax_pool_backward": "reference"}),
    ("eager", {**REFERENCE, "spatial_softmax_pool_backward": "ext"}),  # the backward outside ops.backend
    ("fused", REFERENCE), ("fused", {}), ("fused", {**EXT, "frame_attention": "triton"}),
    ("fused", {"spatial_softmax_pool": "triton+ext"}), ("copy", REFERENCE)])
def test_a_row_that_ran_another_backend_fails(impl, ran):
    with pytest.raises(pytest.fail.Exception, match=rf"group: the '{impl}' row ran .*not what it names"):
        check_backends(impl, ran, "group")
