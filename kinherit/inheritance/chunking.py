"""Chunked losses: a sum of per-chunk losses whose gradients are taken chunk by chunk inside the forward pass.

Only one chunk's float32 [positions, vocabulary] tensors exist at a time, not even among the tensors
saved for backward: each chunk's gradient is computed while its intermediates are alive, then they are
freed or, where the loss keeps them in `ChunkBuffers`, overwritten by the next chunk, and the backward
pass only scales the stored gradients. A plain linear head (`linear_into`) adds its weight's gradient into
the accumulator in place, so no [V, H] tensor is made per chunk either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

ChunkResult = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]
ChunkFn = Callable[[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]], ChunkResult]


class ChunkBuffers:
    """[positions, V] tensors made once per loss call and reused by every chunk, by name.

    On CPU a fresh tensor of this size (above glibc's largest mmap threshold, 32 MiB) is a new mapping
    whose pages fault in and are zeroed on first touch, chunk after chunk: at V = 32k that was about a
    sixth of a training step. A reused one is already resident. (On GPU the caching allocator reuses
    memory anyway; there the buffers change nothing.)
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The first `rows` rows of buffer `name`, made (or remade larger) on demand; contents undefined."""
        held = self.tensors.get(name)
        if held is None or held.shape[0] < rows or held.shape[1] != columns or held.dtype != dtype \
                or held.device != device:
            held = self.tensors[name] = torch.empty(rows, columns, dtype=dtype, device=device)
        return held[:rows]


def unguarded(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`'s memory under a version counter of its own, so that autograd does not see writes through it.

    For logits that no graph saved (a linear head's output is not needed by its backward): the closed-form
    gradient overwrites them in place and is then fed back as their gradient. Through a plain `detach()`
    autograd would refuse the view a custom Function returned as modified in place.
    """
    alias = tensor.new_empty(0)
    return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride())


def plain_linear(head: torch.nn.Module) -> bool:
    """Whether `head` is an `nn.Linear` with ordinary tensors (not a sharded DTensor) as parameters."""
    return type(head) is torch.nn.Linear and all(type(p.detach()) is torch.Tensor for p in head.parameters())


def linear_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  out: torch.Tensor | None) -> torch.Tensor:
    """`x @ weight.T + bias` written into `out` (a reused chunk buffer) when given, else into a new tensor."""
    if out is None:
        return torch.nn.functional.linear(x, weight, bias)
    torch.matmul(x, weight.t(), out=out)
    return out if bias is None else out.add_(bias)


class _LinearInto(torch.autograd.Function):
    """`x @ weight.T + bias` whose weight and bias gradients are added into float32 accumulators, not returned."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_grad, bias_grad, buffers):
        ctx.save_for_backward(x, weight)
        ctx.accumulators = (weight_grad, bias_grad)
        out = None if buffers is None else buffers.get("logits", x.shape[0], weight.shape[0], x.dtype, x.device)
        return linear_logits(x, weight, bias, out)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        weight_grad, bias_grad = ctx.accumulators
        if weight_grad is not None and grad.dtype == torch.float32:  # one GEMM with beta = 1: no [V, H] product
            weight_grad.addmm_(grad.t(), x.float())
        elif weight_grad is not None:  # low-precision logits: no float32 copy of the [positions, V] gradient
            weight_grad.add_(grad.t() @ x.to(grad.dtype))
        if bias_grad is not None:
            bias_grad.add_(grad.float().sum(0))
        grad_x = (grad @ weight.to(grad.dtype)).to(x.dtype) if ctx.needs_input_grad[0] else None
        return grad_x, None, None, None, None, None


def linear_into(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int | None,
                weight_grad: torch.Tensor | None, bias_grad: torch.Tensor | None,
                buffers: ChunkBuffers | None = None) -> torch.Tensor:
    """The logits `x @ weight[:rows].T + bias[:rows]` of a linear head, whose gradients go into the given
    float32 accumulators in place (None: not wanted) while the gradient reaches `x` through autograd.

    Inside a chunk loop this saves, per chunk, a fresh [V, H] tensor and a pass to add it: at V = 128k
    that is 128 MB written and 384 MB moved for each chunk. With `buffers` the logits are written into
    the reused "logits" buffer (valid until the next chunk), not a fresh tensor.
    """
    cut = slice(None, rows)
    return _LinearInto.apply(x, weight.detach()[cut], None if bias is None else bias.detach()[cut],
                             None if weight_grad is None else weight_grad[cut],
                             None if bias_grad is None else bias_grad[cut], buffers)


class _ChunkedLoss(torch.autograd.Function):
    """Sum of per-chunk losses whose gradients are computed during the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, compute: ChunkFn, index: torch.Tensor, chunk_size: int, n_rows: int, *tensors):
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        needs = ctx.needs_input_grad[4:]
        grads = [torch.zeros_like(t, dtype=t.dtype if i < n_rows else torch.float32) if need else None
                 for i, (t, need) in enumerate(zip(tensors, needs, strict=True))]
        total = torch.zeros((), dtype=torch.float32, device=index.device)
        stats = None
        for chunk in index.split(chunk_size):
            with torch.enable_grad():
                row_leaves = [t[chunk].detach().requires_grad_(need) for t, need in zip(rows, needs, strict=False)]
                shared_leaves = [t.detach().requires_grad_(need)
                                 for t, need in zip(shared, needs[n_rows:], strict=True)]
                output, grad_output, loss, chunk_stats = compute(chunk, row_leaves, shared_leaves, grads[n_rows:])
                leaves = row_leaves + shared_leaves
                wrt = [leaf for leaf, need in zip(leaves, needs, strict=True) if need]
                found = []
                if wrt and output.requires_grad:
                    found = torch.autograd.grad(output, wrt, grad_outputs=grad_output, allow_unused=True)
            found_iter = iter(found)
            for i, need in enumerate(needs):
                if not need:
                    continue
                grad = next(found_iter, None)
                if grad is None:
                    continue
                if i < n_rows:  # each row is in one chunk: a copy, far cheaper than index_add_ on CPU
                    grads[i][chunk] = grad.to(grads[i].dtype)
                else:
                    grads[i].add_(grad.float())
            total += loss.detach().float()
            stats = chunk_stats if stats is None else stats + chunk_stats
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has_grad = [g is not None for g in grads]
        ctx.dtypes = [t.dtype for t in tensors]
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    def backward(ctx, grad_total, _grad_stats):
        saved = ctx.saved_tensors
        out = [(g * grad_total).to(dtype) if has else None
               for g, has, dtype in zip(saved, ctx.has_grad, ctx.dtypes, strict=True)]
        return (None, None, None, None, *out)


def chunked_loss(compute: ChunkFn, index: torch.Tensor, chunk_size: int, row_tensors: Sequence[torch.Tensor],
                 shared_tensors: Sequence[torch.Tensor], n_stats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum `compute` over chunks of `index` (distinct rows of `row_tensors`); returns (loss sum, stats sum).

    `compute(chunk, row_slices, shared, shared_grads)` returns `(output, grad_output, loss, stats)`: the gradient of
    the chunk's loss is `autograd.grad(output, leaves, grad_output)` (with `grad_output=None`, output is
    the scalar loss itself; otherwise it is, say, the logits and grad_output their closed-form
    gradient), `loss` the chunk's loss value and `stats` a 1-D tensor of `n_stats` detached numbers.
    With gradients enabled, each chunk's gradient is taken while its float32 intermediates are alive,
    then they are freed, so the backward pass replays nothing. `shared_grads` are the float32 gradient
    accumulators of the shared tensors (None where none is wanted): `compute` may add a shared tensor's
    gradient there itself (`linear_into`), and then must keep that tensor out of `output`'s graph.
    """
    device = index.device
    if index.numel() == 0:
        zero = sum((t.sum() * 0.0 for t in [*row_tensors, *shared_tensors] if t.requires_grad),
                   torch.zeros((), device=device))
        return zero, torch.zeros(n_stats, device=device)
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in [*row_tensors, *shared_tensors])
    if wants_grad:
        return _ChunkedLoss.apply(compute, index, chunk_size, len(row_tensors), *row_tensors, *shared_tensors)
    total = torch.zeros((), dtype=torch.float32, device=device)
    stats = torch.zeros(n_stats, device=device)
    for chunk in index.split(chunk_size):
        _output, _grad, loss, chunk_stats = compute(chunk, [t[chunk] for t in row_tensors], list(shared_tensors),
                                                    [None] * len(shared_tensors))
        total = total + loss.float()
        stats = stats + chunk_stats
    return total, stats
