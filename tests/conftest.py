import os

import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU; the variable
# must be set before the kernels are imported (stafast.kernels is imported lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# The real split metadata of MARS and PRID2011 (shared/data beside the repository, as in CI).
SHARED_DATA = os.environ.get("STAFAST_SHARED_DATA",
                             os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
if not os.path.isdir(SHARED_DATA):
    raise RuntimeError(f"the real split metadata is not at {SHARED_DATA}: put shared/ beside the repository "
                       "or set STAFAST_SHARED_DATA")


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs every run; the seed is printed so a failure can be replayed
    with STAFAST_TEST_SEED=<seed>."""
    seed = int(os.environ.get("STAFAST_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    print(f"torch seed: {seed}")
    return seed
