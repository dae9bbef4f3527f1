"""The CUDA cases of the suite: marked ``cuda`` and skipped where no GPU is present.

benchmarks/run_gpu.sh runs ``pytest -m cuda`` over the test files that import this module.
"""

import pytest
import torch

NEEDS_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]  # a test on the CPU, and on CUDA where present
