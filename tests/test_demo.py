from stafast import demo


def test_demo_runs_and_learns():
    out = demo.main(["--steps", "4", "--clips", "4", "--frames", "3", "--heads", "2", "--height", "64", "--width", "32",
                     "--ids", "2"])
    assert len(out["losses"]) == 4 and out["losses"][-1] < out["losses"][0]
