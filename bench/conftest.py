"""Every benchmark row records which backend ran each stafast op: extra_info["backends_ran"]
(op name -> backend, {} when the row runs none), over the whole test. harness.bench fails a row
whose backends are not the ones it names."""
import pytest

from stafast import ops


@pytest.fixture(autouse=True)
def _record_backends(request):
    if "benchmark" not in request.fixturenames:
        yield
        return
    with ops.backends_ran() as ran:
        request.getfixturevalue("benchmark").extra_info["backends_ran"] = ran
        yield
