import os

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU; the variable
# must be set before the kernels are imported (stafast.kernels is imported lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs every run; the seed is printed so a failure can be replayed
    with STAFAST_TEST_SEED=<seed>."""
    seed = int(os.environ.get("STAFAST_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"torch seed: {seed}")
    return seed
