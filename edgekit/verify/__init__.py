"""Verification: run each artifact in its real runtime against the PyTorch teacher.

`texts` loads the shipped verification texts, `fidelity` compares outputs, `latency`
times an artifact's runtime on this host.
"""
