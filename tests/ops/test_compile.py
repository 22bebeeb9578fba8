import torch

from stafast import ops
from .cases import close, fa_inputs, ssp_inputs


def head(logits, feats, bias):
    """All three ops in one function, as a model head uses them."""
    pooled, attn = ops.spatial_softmax_pool(logits, feats)
    b = bias.shape[0]
    x = pooled.view(-1, b, *pooled.shape[1:])
    mixed = ops.frame_attention(x, bias, 0.25)
    return mixed.square().mean() + ops.diversity_penalty(attn) + ops.diversity_penalty(attn, "l2", "sum")


def test_compile_fullgraph_all_three_ops():
    logits, feats = ssp_inputs((6, 2, 7, 5), torch.float32, requires_grad=True)
    _, bias, _ = fa_inputs((2, 3, 2, 5), torch.float32, requires_grad=True)
    compiled = torch.compile(head, fullgraph=True, backend="inductor")
    loss = compiled(logits, feats, bias)
    grads = torch.autograd.grad(loss, (logits, feats, bias))
    want_loss = head(logits, feats, bias)
    want = torch.autograd.grad(want_loss, (logits, feats, bias))
    close(loss, want_loss, torch.float32, "loss")
    for g, w in zip(grads, want):
        close(g, w, torch.float32, "grad")


def test_reference_backend_is_traced_inline_under_compile():
    """With the reference backend, torch.compile sees the plain PyTorch spec (no custom op in the graph)."""
    logits, feats = ssp_inputs((6, 2, 7, 5), torch.float32, requires_grad=True)
    _, bias, _ = fa_inputs((2, 3, 2, 5), torch.float32, requires_grad=True)
    seen = []

    def spy(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm
    with ops.backend("reference"):
        out = torch.compile(head, fullgraph=True, backend=spy)(logits, feats, bias)
    assert not any("stafast" in t for t in seen), seen
    with ops.backend("reference"):
        close(out, head(logits, feats, bias), torch.float32, "loss")


def test_changing_the_backend_recompiles():
    """The backend is read at trace time and guarded on: a compiled function called again under
    another backend is traced again (the reference inline, the others as the registered ops)."""
    logits, feats = ssp_inputs((6, 2, 7, 5), torch.float32)
    _, bias, _ = fa_inputs((2, 3, 2, 5), torch.float32)
    graphs = []

    def spy(gm, example_inputs):
        graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return gm
    compiled = torch.compile(head, fullgraph=True, backend=spy)
    with ops.backend("reference"):
        compiled(logits, feats, bias)
    compiled(logits, feats, bias)  # auto: the registered ops
    with ops.backend("reference"):
        compiled(logits, feats, bias)  # the first graph again, no new trace
    assert len(graphs) == 2
    assert not any("stafast" in t for t in graphs[0]) and any("stafast" in t for t in graphs[1]), graphs
