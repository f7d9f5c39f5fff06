"""edgekit: compress a transformer text model and export it to ONNX, TFLite and Core ML
for a named device, then prove the result against the teacher."""

__version__ = "0.1.0"

import os as _os

# transformers would otherwise import TensorFlow/JAX (installed for the TFLite converter) on
# every model load: ~8 s and noisy logs for nothing. Users can still override these.
_os.environ.setdefault("USE_TF", "0")
_os.environ.setdefault("USE_FLAX", "0")
_os.environ.setdefault("USE_JAX", "0")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import logging as _logging

# torchao (pulled in by litert-torch/transformers) logs missing CUDA kernels, and torch's pytree
# logs deprecations, on every start: noise for a CPU-only tool.
for _name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
