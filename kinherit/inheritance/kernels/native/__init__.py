"""Single-pass CPU kernels for the closed-form loss terms, built from `rowwise.cpp` on first use.

`torch.compile` generates a separate loop for each row reduction on CPU (a row's maximum, then its sums),
so a row of a [positions, V] chunk is read from memory twice or more and its exponentials run at the
library's 1-ulp speed. These kernels read each row once (an online softmax over cache-sized blocks) with a
cheaper 2-ulp exponential. They are compiled for this CPU's vector instructions (torch's own choice of
them) with `torch.utils.cpp_extension` and cached by it; when no compiler or `ninja` is at hand, `kernels()`
is None (`--loss_kernels auto` then takes the `torch.compile` kernels). Their per-row results are named tuples.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sysconfig
import warnings
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from kinherit.core.locks import exclusive

# ATen's vector types and the compiler flags for the instructions torch dispatches to on this CPU (others
# build ATen's portable vector type)
_ISA_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"],
}
_state: dict[str, ModuleType | None] = {}
logger = logging.getLogger(__name__)


def kernels() -> ModuleType | None:
    """The compiled kernel module, built once per process (and cached on disk across processes); None where it
    cannot be built, after one warning naming why."""
    if "module" not in _state:
        _state["module"] = _build()
    return _state["module"]


def compiler() -> str | None:
    """The C++ compiler torch builds extensions with (`$CXX`, else `c++`), or None where there is none."""
    return shutil.which(os.environ.get("CXX", "c++"))


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native kernels apply to these tensors: float32 CPU matrices with contiguous rows."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 and t.stride(1) == 1
               for t in tensors) and kernels() is not None


class ForwardKLStatistics(NamedTuple):
    """Per row of student logits z against P_T = softmax(t), t = scores * scale: what the loss and its gradient need."""

    table: torch.Tensor  # [n, 7], the columns below, as the gradient kernel reads them
    peak: torch.Tensor  # max z
    lse: torch.Tensor  # logsumexp z
    tempered_lse: torch.Tensor  # logsumexp z / tau
    teacher_lse: torch.Tensor  # logsumexp t
    cross: torch.Tensor  # sum_v p_T (t_v - z_v / tau)
    peak_at_teacher_top: torch.Tensor  # the student's highest logit among the teacher's most likely tokens
    row_sum: torch.Tensor  # sum_v z_v


class RowStatistics(NamedTuple):
    """Per row of logits z (some may be -inf: masked tokens)."""

    peak: torch.Tensor  # max z
    lse: torch.Tensor  # logsumexp z
    tempered_lse: torch.Tensor  # logsumexp z / tau
    row_sum: torch.Tensor  # sum_v z_v


def forward_kl_statistics(z: torch.Tensor, scores: torch.Tensor, scale: float,
                          temperature: float) -> ForwardKLStatistics:
    """The forward-KL row statistics of float32 logits `z` against P_T = softmax(scores * scale), one read of both."""
    table = kernels().forward_kl_statistics(z, scores, scale, temperature)
    return ForwardKLStatistics(table, *table.unbind(1))


def forward_kl_gradient_(z: torch.Tensor, scores: torch.Tensor, scale: float, stats: ForwardKLStatistics,
                         alpha: float, temperature: float) -> torch.Tensor:
    """z <- (1 - alpha) softmax(z) + alpha tau (softmax(z / tau) - P_T) in place, from `forward_kl_statistics`."""
    kernels().forward_kl_gradient_(z, scores, scale, stats.table, alpha, temperature)
    return z


def row_statistics(z: torch.Tensor, temperature: float) -> RowStatistics:
    """The row statistics of float32 logits `z` (a row at -inf throughout has logsumexps -inf), in one read."""
    return RowStatistics(*kernels().row_statistics(z, temperature).unbind(1))


def softmax_mix_(z: torch.Tensor, lse: torch.Tensor, shift: torch.Tensor, coef: torch.Tensor, keep: float,
                 offset: float, temperature: float) -> torch.Tensor:
    """z <- keep exp(z - lse) + coef exp(z / tau - shift) + offset in place, with per-row lse, shift and coef (any
    shape with one value per row): the softmax and the top-K gradient's pass over the vocabulary."""
    def per_row(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(-1).float().contiguous()

    kernels().softmax_mix_(z, per_row(lse), per_row(shift), per_row(coef), keep, offset, temperature)
    return z


def softmax_(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """z <- softmax(z) in place, from its row logsumexps."""
    return softmax_mix_(z, lse, lse, lse.new_zeros(lse.shape), 1.0, 0.0, 1.0)


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the `ninja` package puts it in the environment's scripts folder, which is not on
    PATH when the environment's python runs without being activated."""
    if shutil.which("ninja") is None:
        os.environ["PATH"] = sysconfig.get_path("scripts") + os.pathsep + os.environ.get("PATH", "")


def module_name() -> str:
    """The kernels' module name: one build per instruction set and torch version, so that a build folder shared
    across machines or upgrades never hands out a library built for another."""
    tag = re.sub(r"\W", "_", f"{torch.backends.cpu.get_cpu_capability()}_{torch.__version__}").lower()
    return f"kinherit_rowwise_{tag}"


def build_folder() -> Path:
    """Where the kernels are built and cached: `$TORCH_EXTENSIONS_DIR` (else torch's default root)/kinherit/NAME."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / "kinherit" / module_name()


def _build() -> ModuleType | None:
    from torch.utils import cpp_extension

    if compiler() is None:
        warnings.warn("the native KI loss kernels need a C++ compiler ($CXX, else c++) and none was found; using the "
                      "torch.compile ones", stacklevel=3)
        return None
    _ninja_on_path()
    capability = torch.backends.cpu.get_cpu_capability()
    logger.info("loading the native loss kernels for %s (built once per machine, about half a minute)", capability)
    flags = ["-O3", "-fopenmp", "-fno-math-errno", *_ISA_FLAGS.get(capability, [])]
    folder = build_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # torch's own build lock is a plain file, left behind by a build that was killed, after which every later
        # build waits for it forever. Builders hold our lock instead (the kernel releases it when a builder dies),
        # so a torch lock found while holding ours is stale.
        with exclusive(folder, waiting="waiting for another process to build the native loss kernels"):
            stale = folder / "lock"
            if stale.exists():
                logger.warning("removing %s, left by a kernel build that was killed", stale)
                stale.unlink(missing_ok=True)
            return cpp_extension.load(name=module_name(), sources=[str(Path(__file__).with_name("rowwise.cpp"))],
                                      extra_cflags=flags, extra_ldflags=["-fopenmp"], build_directory=str(folder),
                                      verbose=False)
    except Exception as error:  # noqa: BLE001 - no compiler, no ninja, an unknown platform: the compiled path remains
        warnings.warn(f"the native KI loss kernels could not be built, using the torch.compile ones: {error}",
                      stacklevel=3)
        return None
