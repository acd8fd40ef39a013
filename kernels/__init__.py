"""Triton kernels (installed as bertperf.kernels). Each <op>.py holds @triton.jit kernels and
plain launchers that own shape checks and block sizes."""
