"""Custom ops of InstrAction, each with a pure-PyTorch reference and a Triton kernel.

    soft_dtw(cost, gamma=1.0, lengths_n=None, lengths_m=None, backend="auto") -> Tensor[B]
    banded_cross_attention(q, k, v, frames, window, scale=None, backend="auto") -> Tensor[B,H,K,D]

backend="auto" runs Triton on CUDA tensors and the reference otherwise; backend="triton" on CPU tensors runs
in Triton's interpreter when TRITON_INTERPRET=1 (how the tests check the kernels without a GPU).

The ops live in the repository's top-level ``kernels/`` folder, which has no ``__init__.py`` of its own: a
top-level package named ``kernels`` would shadow Hugging Face's kernel-hub library, which transformers imports
(docs/ARCHITECTURE.md, "Import names"). An install maps the op folders under this package (pyproject's
package-dir); a plain source checkout finds them through the path below.
"""

from pathlib import Path

_checkout_ops = Path(__file__).resolve().parents[2] / "kernels"
if _checkout_ops.is_dir() and str(_checkout_ops) not in __path__:
    __path__.append(str(_checkout_ops))

from instraction.kernels.banded_attention import banded_cross_attention  # noqa: E402
from instraction.kernels.soft_dtw import soft_dtw  # noqa: E402

__all__ = ["soft_dtw", "banded_cross_attention"]
