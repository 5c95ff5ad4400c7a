"""Memory-bounded KD losses: the chunked path over positions and the fused LM-head path.

At V = 151,936 and N = 2,048 positions a float32 (N, V) tensor takes 1.24 GB, and the plain path holds several
at once (both log-softmaxes, the teacher's probabilities, their product, and in backward the softmax and the
gradient). Both paths here compute, chunk of positions by chunk, the loss *and its gradient* in the forward pass
(the gradient of a per-position loss depends on that position's logits only), so the extra memory is one chunk's
temporaries plus what the gradient itself needs:

- ``chunked_per_token``: input the student's logits (N, V); keeps one (N, V) gradient buffer, no other (N, V).
- ``fused_linear_loss``: input the student's final hidden states (N, H) and LM-head weight (V, H); the student's
  logits exist one chunk at a time, so the extra memory is O(chunk x V + N x H + V x H). The idea of Liger-Kernel's
  fused linear losses (Hsu et al., arXiv:2410.10989), written here in plain PyTorch for CPU and GPU.

Both evaluate the very same per-position formulas as the plain path (``Divergence.per_token`` and
``F.cross_entropy``) under autograd, one chunk at a time, so values and gradients equal the plain path's up to
float32 summation order (-inf logits included: probabilities of 0, see ``lmdistill.losses.divergences``). The
first backward hands the forward's gradient buffers to autograd (scaled in place by the incoming gradient), so
``loss.backward()`` costs no further (N, V) memory; a second backward through a retained graph
(``retain_graph=True``, ``gradcheck``) recomputes them from the saved inputs.

One function computes a chunk's loss and gradient (``chunk_step``: the gradient of the per-row formula);
``compile=True`` (the recipe's ``loss.compile``) runs it through ``torch.compile`` (``compiled_chunk_step``),
which fuses the forward and backward elementwise passes over each (chunk, V) block. The Python chunk loop stays
eager. Shapes are static: every chunk has ``min(chunk_size, N)`` rows, the ragged last chunk included (it is taken
as the *last* ``chunk_size`` rows, overlapping the previous chunk, and only its new rows are kept), so a compiled
step meets one shape per (chunk size, V, dtype) and compiles once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lmdistill.losses.divergences import Divergence, at_least_float32, compute_dtype
from lmdistill.vocabulary import vocabulary_mismatch

__all__ = [
    "IGNORE_INDEX",
    "auto_chunk_size",
    "check_compile_available",
    "chunk_step",
    "chunked_per_token",
    "compiled_chunk_step",
    "fused_linear_loss",
]

IGNORE_INDEX = -100
_CHUNK_ELEMENTS = 1 << 23  # 8 M float32 elements = 32 MiB per (chunk, V) temporary


def auto_chunk_size(vocab_size: int, compile: bool = False) -> int:
    """Positions per chunk so that one (chunk, V) float32 temporary is about 32 MiB (at least 8 positions).

    V = 151,936 gives 55 positions, V = 50,257 gives 166, V = 16,000 gives 524. With ``compile`` the chunk is
    twice as large (64 MiB per temporary; the compiled step keeps fewer of them, about 7 for generalized JSD
    against some 25 eagerly): on CPU, inductor parallelises a reduction over V *within* each row, one OpenMP
    region per row and pass, when the rows are fewer than about V / 2,400 (its rule "inner loop 300x the outer
    one", in vectors of 8), which stalls whenever another process shares the cores (forward KL: 3.7 s instead of
    0.09 s per 55-row chunk at V = 151,936, measured); 16 M / V rows stay above that rule up to V = 199,000
    (110 rows at V = 151,936). The LM-head matmuls of the fused path also run faster on more rows.
    """
    return max(8, (_CHUNK_ELEMENTS * (2 if compile else 1)) // max(vocab_size, 1))


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy at T = 1 per position, softmax in >= float32: (N, V) logits, (N,) targets -> (N,), 0 at -100."""
    return F.cross_entropy(at_least_float32(logits), targets, ignore_index=IGNORE_INDEX, reduction="none")


def combined_row_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor | None,
    div: Divergence | None,
    temperature: float,
    div_weights: Tensor | None,
    ce_weights: Tensor | None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-position ``w_d * D + w_ce * CE`` of (N, V) rows, with its two parts (>= float32).

    The one formula of every path: the plain path applies it to all rows at once, the chunked and fused paths
    to one chunk of rows at a time.
    """
    total = None
    div_rows = ce_rows = None
    if div is not None:
        div_rows = div.per_token(student_logits, teacher_logits, temperature)
        total = masked_weighted(div_rows, div_weights)
    if targets is not None:
        ce_rows = token_cross_entropy(student_logits, targets)
        part = masked_weighted(ce_rows, ce_weights)
        total = part if total is None else total + part
    return total, div_rows, ce_rows


def masked_weighted(values: Tensor, weights: Tensor | None) -> Tensor:
    """``values * weights`` with exact zeros where the weight is 0, whatever the value there."""
    if weights is None:
        return values
    return torch.where(weights != 0, values * weights, torch.zeros((), dtype=values.dtype, device=values.device))


ChunkStep = Callable[..., tuple[tuple[Tensor, Tensor | None, Tensor | None], tuple[Tensor, ...]]]


def chunk_step(
    div: Divergence | None, temperature: float, need_s: bool, need_t: bool, *, functional: bool = False
) -> ChunkStep:
    """The per-chunk math of both paths: one chunk's loss per row, its parts, and its gradient w.r.t. the logits.

    The gradient of ``combined_row_loss`` summed over the chunk's rows: rows are independent, so the gradient of
    the sum w.r.t. a row's logits is that row's own gradient. Eagerly by ``torch.autograd.grad``; with
    ``functional`` by ``torch.func.grad_and_value``, the form ``torch.compile`` traces into one graph (dynamo does
    not trace ``autograd.grad``). Both give the same values; eagerly ``autograd.grad`` needs less memory (for
    generalized JSD, torch.func's holds about 14 more (chunk, V) temporaries at its peak, measured).

    Args:
        div (Divergence | None): the divergence, or None for CE only.
        temperature (float): T > 0 of the divergence.
        need_s (bool): return the gradient w.r.t. the student's logits.
        need_t (bool): return the gradient w.r.t. the teacher's logits.
        functional (bool): compute it by ``torch.func`` (for ``compiled_chunk_step``).

    Returns:
        Callable: ``step(student_logits, teacher_logits, targets, div_weights, ce_weights)`` on (R, V) logits and
        (R,) targets and weights (teacher, targets and weights may be None) -> ``((total, D, CE), grads)``: (R,)
        rows in >= float32 without gradient (D or CE None when not computed), and a tuple of the (R, V) gradients
        asked for, the student's first.
    """

    def rows(student_logits, teacher_logits, targets, div_weights, ce_weights):
        return combined_row_loss(student_logits, teacher_logits, targets, div, temperature, div_weights, ce_weights)

    if not functional:

        def step(student_logits, teacher_logits, targets, div_weights, ce_weights):
            s = student_logits.detach().requires_grad_(need_s)
            t = None if teacher_logits is None else teacher_logits.detach().requires_grad_(need_t)
            with torch.enable_grad():
                parts = rows(s, t, targets, div_weights, ce_weights)
                total = parts[0].sum()
            inputs = [x for x, need in ((s, need_s), (t, need_t)) if need]
            grads = torch.autograd.grad(total, inputs) if inputs else ()
            return tuple(None if x is None else x.detach() for x in parts), tuple(grads)

        return step

    def summed(*tensors):
        parts = rows(*tensors)
        return parts[0].sum(), tuple(x for x in parts if x is not None)  # torch.func's aux holds tensors only

    def unpack(present: tuple[Tensor, ...], targets: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        rest = iter(present[1:])
        return present[0], next(rest) if div is not None else None, next(rest) if targets is not None else None

    argnums = tuple(i for i, need in ((0, need_s), (1, need_t)) if need)
    if not argnums:

        def step(student_logits, teacher_logits, targets, div_weights, ce_weights):
            with torch.no_grad():
                _, present = summed(student_logits, teacher_logits, targets, div_weights, ce_weights)
            return unpack(present, targets), ()

        return step
    grad_and_parts = torch.func.grad_and_value(summed, argnums=argnums, has_aux=True)

    def step(student_logits, teacher_logits, targets, div_weights, ce_weights):
        grads, (_, present) = grad_and_parts(student_logits, teacher_logits, targets, div_weights, ce_weights)
        return unpack(present, targets), grads

    return step


_COMPILED_STEPS: dict[tuple, ChunkStep] = {}
"""``torch.compile``d chunk steps by (divergence, T, need_s, need_t)."""


def compiled_chunk_step(div: Divergence | None, temperature: float, need_s: bool, need_t: bool) -> ChunkStep:
    """``chunk_step`` through ``torch.compile(dynamic=False)``, created once per key and cached at module level.

    The key is (divergence with its parameter, temperature, need_s, need_t); T and the parameter are constants of
    the graph. A compiled step compiles once per input signature it meets (rows, V, dtype, which inputs are
    None); the chunk loop gives it one row count, ``min(chunk_size, N)``. Each key has a code object of its own,
    so dynamo's ``recompile_limit`` (8) counts per key; past it a new signature runs uncompiled (same values).
    Compiler errors are raised as ``RuntimeError`` naming ``loss.compile`` (see ``check_compile_available``).
    """
    key = (div, float(temperature), bool(need_s), bool(need_t))
    step = _COMPILED_STEPS.get(key)
    if step is None:
        eager = chunk_step(*key, functional=True)
        eager.__code__ = eager.__code__.replace()  # dynamo caches graphs (and counts recompiles) per code object
        compiled = torch.compile(eager, dynamic=False)

        def step(*tensors):
            try:
                return compiled(*tensors)
            except torch._dynamo.exc.TorchDynamoException as err:
                raise _compile_error(_first_line(getattr(err, "inner_exception", None) or err)) from err

        _COMPILED_STEPS[key] = step
    return step


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _compile_error(reason: str) -> RuntimeError:
    return RuntimeError(
        f"loss.compile=true, but torch.compile cannot compile the chunked loss here: {reason}. "
        "Set loss.compile to false (the same loss, uncompiled)."
    )


_AVAILABLE: set[str | None] = set()


def check_compile_available(device: torch.device | str | None = None) -> None:
    """Raise a clear error unless ``torch.compile`` can compile the chunked loss (for this device type).

    Checks that TorchDynamo supports this Python and platform, and the compiler that inductor needs for the
    device: a working C++ compiler on CPU (``g++``, or ``torch._inductor.config.cpp.cxx``), Triton on CUDA. A
    success is remembered.

    Args:
        device (torch.device | str | None): the device of the loss's inputs; None checks only what does not
            depend on the device.

    Raises:
        RuntimeError: naming ``loss.compile``, with the reason.
    """
    kind = None if device is None else torch.device(device).type
    if kind in _AVAILABLE:
        return
    if not torch._dynamo.is_dynamo_supported():
        raise _compile_error("TorchDynamo does not support this Python or platform")
    if kind == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler  # noqa: PLC0415 (internal API, torch >= 2.5)
        except ImportError:  # an older torch: the first compile tells
            get_cpp_compiler = None
        if get_cpp_compiler is not None:
            try:
                get_cpp_compiler()
            except Exception as err:  # InvalidCxxCompiler (a RuntimeError), or whatever probing it raised
                raise _compile_error(f"inductor's CPU backend needs a working C++ compiler ({err})") from err
    elif kind == "cuda":
        from torch.utils._triton import has_triton  # noqa: PLC0415

        if not has_triton():
            raise _compile_error("inductor's CUDA backend needs Triton, which is not installed")
    _AVAILABLE.add(kind)


def _chunks(n_rows: int, chunk_size: int, static: bool):
    """``(start, stop, new)`` per chunk: its rows are ``[start, stop)``, those from ``start + new`` not yet done.

    With ``static`` every chunk has ``min(chunk_size, n_rows)`` rows: a ragged last chunk is moved back to end at
    ``n_rows``, and its first ``new`` rows (done by the previous chunk) are computed again and dropped.
    """
    for first in range(0, n_rows, chunk_size):
        stop = min(first + chunk_size, n_rows)
        start = max(0, stop - chunk_size) if static else first
        yield start, stop, first - start


def _hand_over(ctx, recompute) -> tuple:
    """The gradients of the forward pass, given to autograd once; any later backward recomputes them.

    Handing the forward's buffers over (rather than copies) is what keeps the extra memory at one gradient; once
    handed over, autograd may accumulate into them, so a second backward through a retained graph recomputes
    the gradients chunk by chunk from the saved inputs instead of reusing the buffers.
    """
    grads = ctx.grads
    ctx.grads = None
    return grads if grads is not None else recompute()


def _scale_(grad: Tensor | None, scale: Tensor) -> Tensor | None:
    """``grad *= scale`` in place (on a buffer this function owns), skipped when the scale is exactly 1."""
    if grad is None or (scale.numel() == 1 and scale.item() == 1.0):
        return grad
    return grad.mul_(scale.to(grad.dtype))


def _step_for(div, temperature, need_s, need_t, compile) -> ChunkStep:
    return (compiled_chunk_step if compile else chunk_step)(div, temperature, need_s, need_t)


def _rows(x: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if x is None else x[start:stop]


def _chunked_pass(
    student_logits,
    teacher_logits,
    targets,
    div_weights,
    ce_weights,
    div,
    temperature,
    chunk_size,
    need_s,
    need_t,
    compile,
):
    """Loss per row, its parts, and the gradients w.r.t. student (and teacher) logits, one chunk at a time."""
    n_rows = student_logits.shape[0]
    step = _step_for(div, temperature, need_s, need_t, compile)
    grad_s = torch.empty_like(student_logits) if need_s else None
    grad_t = torch.empty_like(teacher_logits) if need_t else None
    # the dtype the formulas compute in (float64 if either input is): a float64 loss is not rounded to float32
    dtype = compute_dtype(student_logits) if teacher_logits is None else compute_dtype(student_logits, teacher_logits)
    per_row = student_logits.new_empty(n_rows, dtype=dtype)
    div_rows_all = per_row.new_zeros(n_rows) if div is not None else None
    ce_rows_all = per_row.new_zeros(n_rows) if targets is not None else None
    tensors = (student_logits.detach(), None if teacher_logits is None else teacher_logits.detach())
    tensors += (targets, div_weights, ce_weights)
    for start, stop, new in _chunks(n_rows, chunk_size, static=compile):
        kept = slice(start + new, stop)
        (chunk_total, div_rows, ce_rows), grads = step(*(_rows(x, start, stop) for x in tensors))
        grads = list(grads)
        if need_s:
            grad_s[kept] = grads.pop(0)[new:]
        if need_t:
            grad_t[kept] = grads.pop(0)[new:]
        per_row[kept] = chunk_total[new:]
        if div_rows is not None:
            div_rows_all[kept] = div_rows[new:]
        if ce_rows is not None:
            ce_rows_all[kept] = ce_rows[new:]
    return per_row, div_rows_all, ce_rows_all, grad_s, grad_t


class _ChunkedLoss(torch.autograd.Function):
    """(N, V) logits -> combined loss (scalar, or (N,) per position); gradient computed chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx,
        student_logits,
        teacher_logits,
        targets,
        div_weights,
        ce_weights,
        div,
        temperature,
        chunk_size,
        reduce,
        compile,
    ):
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        args = (div, temperature, chunk_size, need_s, need_t, compile)
        per_row, div_rows, ce_rows, grad_s, grad_t = _chunked_pass(
            student_logits, teacher_logits, targets, div_weights, ce_weights, *args
        )
        ctx.save_for_backward(student_logits, teacher_logits, targets, div_weights, ce_weights)
        ctx.args, ctx.reduce, ctx.grads = args, reduce, (grad_s, grad_t)
        side = [x for x in (div_rows, ce_rows) if x is not None]
        ctx.mark_non_differentiable(*side)
        return (per_row.sum() if reduce else per_row), div_rows, ce_rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_div, _grad_ce):
        grad_s, grad_t = _hand_over(ctx, lambda: _chunked_pass(*ctx.saved_tensors, *ctx.args)[3:])
        scale = grad_out if ctx.reduce else grad_out.unsqueeze(-1)  # scalar, or (N, 1) per position
        return _scale_(grad_s, scale), _scale_(grad_t, scale), None, None, None, None, None, None, None, None


def _check_parts(div: Divergence | None, teacher_logits: Tensor | None, targets: Tensor | None) -> None:
    if div is not None and teacher_logits is None:
        raise ValueError("a divergence needs teacher_logits")
    if div is None and targets is None:
        raise ValueError("nothing to compute: give a divergence or targets")


def _flat(x: Tensor | None, n_rows: int, name: str, trailing: tuple[int, ...] = ()) -> Tensor | None:
    if x is None:
        return None
    if x.numel() != n_rows * (trailing[0] if trailing else 1):
        raise ValueError(f"{name} of shape {tuple(x.shape)} does not match {n_rows} positions")
    return x.reshape(n_rows, *trailing)  # a view for contiguous inputs


def chunked_per_token(
    div: Divergence | None,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    temperature: float = 1.0,
    *,
    chunk_size: int | None = None,
    targets: Tensor | None = None,
    div_weights: Tensor | None = None,
    ce_weights: Tensor | None = None,
    reduce: bool = False,
    return_parts: bool = False,
    compile: bool = False,
) -> Tensor | tuple[Tensor, Tensor | None, Tensor | None]:
    """``w_d * D(p_t^T, p_s^T) + w_ce * CE(y, z_s)`` per position, computed chunk by chunk with its gradient.

    With ``reduce=True`` the result is the sum over positions, so a reduction is given as weights
    (``reduction_weights``) and one (N, V) gradient buffer is all the extra memory; with ``reduce=False`` the
    result is per position and backward allocates a second (N, V) tensor (the gradient scaled per position). The
    objective passes ``targets`` too, so that CE and D share the buffer.

    Args:
        div (Divergence | None): the divergence, or None for CE only.
        student_logits (Tensor): (..., V) student logits; a contiguous tensor is not copied.
        teacher_logits (Tensor | None): (..., V) teacher logits; required with ``div``.
        temperature (float): T > 0 of the divergence (CE is at T = 1).
        chunk_size (int | None): positions per chunk; None = ``auto_chunk_size(V, compile)``.
        targets (Tensor | None): (...) next-token ids for CE, -100 where not supervised.
        div_weights (Tensor | None): (...) weight of D per position (0 = masked: the position changes nothing);
            None = 1. In the loss's dtype: float64 logits need float64 weights (``reduction_weights(...,
            dtype=torch.float64)``), since float32 weights such as 1/3 are off by up to 3e-8 relative.
        ce_weights (Tensor | None): (...) weight of CE per position, same dtype rule; None = 1.
        reduce (bool): return the weighted sum over positions (a scalar) instead of (...) per position.
        return_parts (bool): also return D and CE per position (without gradient), for logging.
        compile (bool): run the per-chunk math through ``torch.compile`` (``compiled_chunk_step``; the recipe's
            ``loss.compile``); equal values and gradients to float32 rounding.

    Returns:
        Tensor: scalar or (...) float32 (float64 for a float64 input) combined loss (with gradient); with
        ``return_parts``, a tuple ``(combined, D or None, CE or None)``.

    Raises:
        ValueError: a divergence without teacher logits, or shapes that do not match.
        RuntimeError: ``compile`` where ``torch.compile`` cannot run (``check_compile_available``).
    """
    _check_parts(div, teacher_logits, targets)
    if compile:
        check_compile_available(student_logits.device)
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    n_rows = student_logits.numel() // vocab
    chunk_size = chunk_size or auto_chunk_size(vocab, compile)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    total, div_rows, ce_rows = _ChunkedLoss.apply(
        student_logits.reshape(n_rows, vocab),
        _flat(teacher_logits, n_rows, "teacher_logits", (vocab,)),
        _flat(targets, n_rows, "targets"),
        _flat(div_weights, n_rows, "div_weights"),
        _flat(ce_weights, n_rows, "ce_weights"),
        div,
        float(temperature),
        int(chunk_size),
        reduce,
        bool(compile),
    )
    if not reduce:
        total = total.view(lead)
    if not return_parts:
        return total
    return total, None if div_rows is None else div_rows.view(lead), None if ce_rows is None else ce_rows.view(lead)


def _fused_pass(
    hidden,
    weight,
    bias,
    teacher_logits,
    targets,
    div_weights,
    ce_weights,
    div,
    temperature,
    chunk_size,
    needs,
    compile,
):
    """Loss, its parts per row, and the gradients w.r.t. hidden states, LM-head weight and bias, chunk by chunk."""
    n_rows = hidden.shape[0]
    need_h, need_w, need_b = needs
    step = _step_for(div, temperature, any(needs), False, compile)
    weight_d, bias_d = weight.detach(), None if bias is None else bias.detach()
    grad_h = torch.empty_like(hidden) if need_h else None
    acc = torch.promote_types(weight.dtype, torch.float32)  # accumulate the LM-head gradient in >= float32
    grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
    grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
    dtype = compute_dtype(hidden, weight) if teacher_logits is None else compute_dtype(hidden, weight, teacher_logits)
    loss = hidden.new_zeros((), dtype=dtype)
    div_rows_all = loss.new_zeros(n_rows) if div is not None else None
    ce_rows_all = loss.new_zeros(n_rows) if targets is not None else None
    hidden_d = hidden.detach()
    others = (None if teacher_logits is None else teacher_logits.detach(), targets, div_weights, ce_weights)
    for start, stop, new in _chunks(n_rows, chunk_size, static=compile):
        kept = slice(start + new, stop)
        h = hidden_d[start + new : stop]
        with torch.no_grad():
            logits = F.linear(hidden_d[start:stop], weight_d, bias_d)  # (chunk, V), the only student logits
        (chunk_total, div_rows, ce_rows), grads = step(logits, *(_rows(x, start, stop) for x in others))
        del logits
        if grads:
            grad_logits = grads[0][new:].to(weight.dtype)  # (chunk, V); the rows of this chunk only
            del grads
            if need_h:
                grad_h[kept] = grad_logits @ weight_d
            if need_w:
                grad_w.addmm_(grad_logits.t().to(acc), h.to(acc))
            if need_b:
                grad_b += grad_logits.to(acc).sum(0)
            del grad_logits
        loss += chunk_total[new:].sum()
        if div_rows is not None:
            div_rows_all[kept] = div_rows[new:]
        if ce_rows is not None:
            ce_rows_all[kept] = ce_rows[new:]
    grads = (
        grad_h,
        None if grad_w is None else grad_w.to(weight.dtype),
        None if grad_b is None else grad_b.to(bias.dtype),
    )
    return loss, div_rows_all, ce_rows_all, grads


class _FusedLinearLoss(torch.autograd.Function):
    """(N, H) hidden states and (V, H) LM head -> scalar ``sum_n w_d D + w_ce CE``; logits one chunk at a time."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        teacher_logits,
        targets,
        div_weights,
        ce_weights,
        div,
        temperature,
        chunk_size,
        compile,
    ):
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        args = (div, temperature, chunk_size, needs, compile)
        tensors = (hidden, weight, bias, teacher_logits, targets, div_weights, ce_weights)
        loss, div_rows, ce_rows, grads = _fused_pass(*tensors, *args)
        ctx.save_for_backward(*tensors)
        ctx.args, ctx.grads = args, grads
        side = [x for x in (div_rows, ce_rows) if x is not None]
        ctx.mark_non_differentiable(*side)
        return loss, div_rows, ce_rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_div, _grad_ce):
        grads = _hand_over(ctx, lambda: _fused_pass(*ctx.saved_tensors, *ctx.args)[3])
        grad_h, grad_w, grad_b = (_scale_(g, grad_loss) for g in grads)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None, None


def fused_linear_loss(
    hidden: Tensor,
    weight: Tensor,
    teacher_logits: Tensor | None,
    div: Divergence | None,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    targets: Tensor | None = None,
    div_weights: Tensor | None = None,
    ce_weights: Tensor | None = None,
    chunk_size: int | None = None,
    compile: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``sum_n w_d[n] * D_n + w_ce[n] * CE_n`` where the student's logits are ``hidden @ weight.T + bias``.

    The student logits are computed one chunk of positions at a time, with the gradient with respect to the
    hidden states, the LM-head weight and the bias accumulated in the same pass, so no (N, V) student tensor is
    ever held. Reductions are expressed as weights (``reduction_weights``): ``w = mask / mask.sum()`` is "mean".

    Args:
        hidden (Tensor): (..., H) the student's final hidden states (after its final norm).
        weight (Tensor): (V, H) the LM-head (output embedding) weight.
        teacher_logits (Tensor | None): (..., V) teacher logits; required with ``div``.
        div (Divergence | None): the divergence, or None for CE only.
        bias (Tensor | None): (V,) LM-head bias, if the model has one.
        temperature (float): T > 0 of the divergence (CE is at T = 1).
        targets (Tensor | None): (...) next-token ids for CE, -100 where not supervised.
        div_weights (Tensor | None): (...) weights of D per position; None = 1 (a sum). In the loss's dtype:
            a float64 head and hidden states need float64 weights (``reduction_weights(..., dtype=...)``).
        ce_weights (Tensor | None): (...) weights of CE per position, same dtype rule; None = 1.
        chunk_size (int | None): positions per chunk; None = ``auto_chunk_size(V, compile)``.
        compile (bool): run the per-chunk math (not the LM-head matmuls) through ``torch.compile``
            (``compiled_chunk_step``; the recipe's ``loss.compile``); equal values and gradients to float32 rounding.

    Returns:
        tuple: scalar float32 loss (with gradient), and D and CE per position (...) without gradient (None for a
        part not computed).

    Raises:
        ValueError: a divergence without teacher logits, or shapes that do not match.
        RuntimeError: ``compile`` where ``torch.compile`` cannot run (``check_compile_available``).
    """
    _check_parts(div, teacher_logits, targets)
    if compile:
        check_compile_available(hidden.device)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, H={hidden.shape[-1]}), got {tuple(weight.shape)}")
    vocab = weight.shape[0]
    if teacher_logits is not None and teacher_logits.shape[-1] != vocab:
        raise vocabulary_mismatch(
            "teacher_logits", teacher_logits.shape[-1], "columns", "the student's LM head", vocab, "rows"
        )
    lead = hidden.shape[:-1]
    n_rows = hidden.numel() // hidden.shape[-1]
    chunk_size = chunk_size or auto_chunk_size(vocab, compile)
    loss, div_rows, ce_rows = _FusedLinearLoss.apply(
        hidden.reshape(n_rows, hidden.shape[-1]),
        weight,
        bias,
        _flat(teacher_logits, n_rows, "teacher_logits", (vocab,)),
        _flat(targets, n_rows, "targets"),
        _flat(div_weights, n_rows, "div_weights"),
        _flat(ce_weights, n_rows, "ce_weights"),
        div,
        float(temperature),
        int(chunk_size),
        bool(compile),
    )
    return loss, None if div_rows is None else div_rows.view(lead), None if ce_rows is None else ce_rows.view(lead)
