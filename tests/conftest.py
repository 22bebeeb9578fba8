import os
import random

import numpy as np
import pytest
import torch

# Triton kernels run on CPU tensors through the interpreter when there is no GPU; the variable
# must be set before the kernels are imported (stafast.kernels is imported lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The real split metadata of MARS and PRID2011: shared/data beside the repository (as in CI), or
# STAFAST_SHARED_DATA.  Without it the tests that read it skip, saying so.
SHARED_DATA = os.environ.get("STAFAST_SHARED_DATA",
                             os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def shared_data(*parts: str) -> str:
    """The path of `parts` under the shared split metadata; skips the calling test when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs the real split metadata {os.path.normpath(path)}: put shared/ beside the repository "
                    "or set STAFAST_SHARED_DATA")
    return path


# Every test starts from a fixed seed (0), so a failure replays as it happened.  STAFAST_TEST_SEED=<n>
# picks another one; STAFAST_TEST_SEED=random draws a fresh seed per test, printed with the test's
# output so that its failure can be replayed with STAFAST_TEST_SEED=<that seed>.
SEED = os.environ.get("STAFAST_TEST_SEED", "0")


def pytest_report_header(config):
    return f"stafast test seed: {SEED} (STAFAST_TEST_SEED; 'random' for fresh seeds per test)"


@pytest.fixture(autouse=True)
def rng_seed():
    value = int.from_bytes(os.urandom(4), "little") if SEED == "random" else int(SEED)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    print(f"test seed: {value} (replay with STAFAST_TEST_SEED={value})")
    return value
