"""Triton kernels of the stafast ops, imported as stafast.kernels (launchers only, no torch.library code)."""
