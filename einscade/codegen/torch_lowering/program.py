"""The torch lowering of one cascade: bind inputs, pick and cache layouts, run the groups.

``TorchProgram(cascade)`` recognises the masked softmax form once. A call binds the inputs
(sizes, parameters), brings Q, K and V to the canonical ``[heads, tokens, dim]`` shapes
(K and V stay un-repeated under GQA), finds the plan for these sizes, mask parameters and
lookup tensors (built on first use: layout, index tensors, partial-tile masks; cached), and
runs it. A mask that reads a batch rank (``doc[b, m] == doc[b, p]``) gets one plan per
value of that rank. Cascades of another form run densely through the reference executor,
exact but N x N, with a one-time warning.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
import warnings
from dataclasses import dataclass

import torch

from einscade.codegen.bind import Binding, bind, eval_scalar
from einscade.codegen.native.attend import attend_plan
from einscade.codegen.native.attend import available as native_available
from einscade.codegen.native.library import unavailable_reason
from einscade.codegen.reference import reference
from einscade.codegen.torch_lowering.canonical import Canonical, batch_coordinates, canonicalise
from einscade.codegen.torch_lowering.execute import DEFAULT_BUDGET, Kernel, run_plan
from einscade.codegen.torch_lowering.plan import Plan, build_plan, pick_layout
from einscade.codegen.torch_lowering.recognize import SoftmaxForm, Unsupported, recognize
from einscade.codegen.torch_lowering.scores import ScoreMapEvaluator
from einscade.ir.cascade import Cascade
from einscade.ir.expr import names
from einscade.passes.analysis.masks import Mask, attention_mask

_WARNED: set[str] = set()


def warn_once(key: str, message: str, stacklevel: int = 4) -> None:
    """A warning shown once per process and key (``stacklevel`` as in ``warnings.warn``,
    counted from the caller of ``warn_once``)."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


@dataclass
class CallStats:
    """What the last call did: the plans it used and the score elements they computed."""

    computed_elements: int = 0
    layout_elements: int = 0
    dense_elements: int = 0
    groups: int = 0
    plans_built: int = 0
    plan_seconds: float = 0.0
    dense_fallback: bool = False
    kernel: str = ""


class TorchProgram:
    """A cascade lowered to block-sparse torch; call it with tensors by name.

    ``options``: ``layout`` ("cost": the cost model's choice, the default; "rule"),
    ``query_tile``, ``key_mode``, ``key_tile``, ``pad`` (overrides, see :func:`pick_layout`),
    ``budget`` (score elements per chunk, default 2**19), ``workers`` (threads running
    chunks, default ``torch.get_num_threads()``) and ``kernel``: "auto" (the native C++
    kernel, :mod:`einscade.codegen.native`, where the score map is a scale and the compute
    dtype float32, else "matmul"), "native" (the same), "matmul" (batched matmul, score
    map and softmax per chunk of tiles). ``kernel_reason`` says which kernel runs and why
    (a native kernel that cannot be built falls back to "matmul"); ``stats``
    describes the last call. Calls run without autograd: inputs that require grad are
    refused (the lowering is an inference path).
    """

    def __init__(self, cascade: Cascade, **options: object):
        self.cascade = cascade
        self.layout_options = {k: options.pop(k) for k in list(options) if k in _LAYOUT_KEYS}
        self.budget = int(options.pop("budget", DEFAULT_BUDGET))  # type: ignore[call-overload]
        self.workers = int(options.pop("workers", 0)) or torch.get_num_threads()  # type: ignore[call-overload]
        kernel = options.pop("kernel", "auto")
        if kernel not in KERNELS:
            raise ValueError(f"torch target: kernel must be one of {KERNELS}, got {kernel!r}")
        if options:
            raise TypeError(f"torch target: unknown option {sorted(options)[0]!r}")
        self.plans: dict[tuple, Plan] = {}  # type: ignore[type-arg]
        self._head_maps: dict[tuple, torch.Tensor] = {}  # type: ignore[type-arg]
        self.stats = CallStats()
        try:
            self.form: SoftmaxForm | None = recognize(cascade)
            self.mask: Mask | None = attention_mask(cascade, self.form.query_rank,
                                                    self.form.key_rank)  # fmt: skip
            self._check_other_ranks()
            self.reason = ""
        except Unsupported as why:
            self.form, self.mask, self.reason = None, None, str(why)
        self.kernel, self.kernel_reason = _kernel(self.form, kernel)  # type: ignore[arg-type]
        self._predicate_names = set()
        if self.mask is not None and self.mask.predicate is not None:
            self._predicate_names = names(self.mask.predicate)

    @property
    def block_sparse(self) -> bool:
        """Whether calls run block-sparse (False: the dense fallback)."""
        return self.form is not None

    def _check_other_ranks(self) -> None:
        assert self.form is not None and self.mask is not None
        for rank in self.mask.other_ranks:
            if rank not in self.form.batch_ranks:
                raise Unsupported(f"the mask reads rank {rank!r}, not a batch rank")

    def __call__(self, **arguments: object) -> torch.Tensor:
        tensors = {k: v for k, v in arguments.items() if isinstance(v, torch.Tensor)}
        for name in tensors:
            if self.cascade.input(name) is None:
                raise TypeError(f"@{self.cascade.name} has no input tensor {name!r}")
        if self.form is None:
            return self._dense(arguments, tensors)
        _refuse_grad(self.cascade.name, tensors)
        scalars = {k: v for k, v in arguments.items() if not isinstance(v, torch.Tensor)}
        binding = bind(self.cascade, tensors, scalars)
        canonical = canonicalise(self.form, self.cascade, binding, tensors, self._head_maps)
        out = self._run(binding, canonical, tensors)
        return canonical.restore(out, tensors)

    def _dense(self, arguments: dict[str, object], tensors: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
        warn_once(
            f"dense:{self.cascade.name}:{self.reason}",
            f"einscade torch target: @{self.cascade.name} runs densely through the reference "
            f"executor (exact, but N x N work): {self.reason}",
        )
        dtype = _input_dtype(tensors)
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        result = reference(self.cascade, dtype=compute, **arguments)
        self.stats = CallStats(dense_fallback=True)
        if isinstance(result, tuple):
            return tuple(r.to(dtype) for r in result)
        return result.to(dtype)

    # -- block-sparse execution ---------------------------------------------------------

    def _run(self, binding: Binding, canonical: Canonical, tensors) -> torch.Tensor:  # type: ignore[no-untyped-def]
        assert self.form is not None and self.mask is not None
        native = self.kernel == "native" and canonical.q.dtype == torch.float32
        self.stats = CallStats(kernel="native" if native else "matmul")
        scale = self._scale(binding)
        lookups = {d.name: tensors[d.name] for d in self.mask.lookups}
        out = torch.empty(canonical.out_shape, dtype=canonical.q.dtype)
        for at, heads in self._assignments(binding, lookups):
            plan = self.plan(binding, lookups, at)
            sub = canonical.problem(heads, out)
            problem = sub.problem
            if native:
                attend_plan(plan, problem.q, problem.k, problem.v, problem.out, scale,
                            self.workers)  # fmt: skip
            else:
                run_plan(plan, problem, self._matmul_kernel(scale, binding, tensors, heads),
                         self.budget, self.workers)  # fmt: skip
            sub.finish(out)
            self._count(plan, len(heads))
        return out

    def _matmul_kernel(self, scale: float, binding: Binding, tensors, heads) -> Kernel:  # type: ignore[no-untyped-def]
        assert self.form is not None
        if self.form.linear_scale is not None:
            return Kernel(scale)
        score_map = ScoreMapEvaluator(self.form, self.cascade, binding, tensors, heads)
        return Kernel(scale, score_map)

    def _scale(self, binding: Binding) -> float:
        """The scale folded into the matmul: every scalar factor when the score map only
        scales, else the score product's own factors (the map applies the rest)."""
        assert self.form is not None
        env = {**binding.sizes, **binding.params}
        factors = self.form.linear_scale
        if factors is None:
            factors = self.form.qk_factors
        return float(math.prod(eval_scalar(f, env) for f in factors))

    def _assignments(self, binding: Binding, lookups):  # type: ignore[no-untyped-def]
        """(values of the batch ranks the mask reads, the flat query heads they select)."""
        assert self.form is not None and self.mask is not None
        coords = batch_coordinates(self.form, binding)
        total = math.prod(binding.sizes[r.upper()] for r in self.form.batch_ranks)
        if not self.mask.other_ranks:
            yield {}, torch.arange(total)
            return
        ranks = self.mask.other_ranks
        for values in itertools.product(*(range(binding.sizes[r.upper()]) for r in ranks)):
            selected = torch.ones(total, dtype=torch.bool)
            for rank, value in zip(ranks, values, strict=True):
                selected &= coords[rank] == value
            yield dict(zip(ranks, values, strict=True)), selected.nonzero().flatten()

    def plan(self, binding: Binding, lookups: dict[str, torch.Tensor], at: dict[str, int]) -> Plan:
        """The cached plan for these sizes, mask parameters, lookups and batch values."""
        assert self.mask is not None
        used = self._predicate_names
        key = (
            tuple(sorted(binding.sizes.items())),
            tuple(sorted((k, v) for k, v in binding.params.items() if k in used)),
            tuple(sorted((k, _digest(v)) for k, v in lookups.items())),
            tuple(sorted(at.items())),
        )
        if key not in self.plans:
            began = time.perf_counter()
            with torch.inference_mode(False):  # plain tensors: reusable in either mode
                layout, choice = pick_layout(self.mask, binding.sizes, binding.params, lookups,
                                             at, **self.layout_options)  # fmt: skip
                bound = self.mask.bind(binding.sizes, binding.params, lookups, at)
                self.plans[key] = build_plan(layout, choice, bound)
            self.stats.plans_built += 1
            self.stats.plan_seconds += time.perf_counter() - began
        return self.plans[key]

    def _count(self, plan: Plan, heads: int) -> None:
        queries = math.prod(plan.layout.query_grid)
        keys = math.prod(plan.layout.key_grid)
        self.stats.computed_elements += plan.computed_elements * heads
        self.stats.layout_elements += plan.layout_elements * heads
        self.stats.dense_elements += queries * keys * heads
        self.stats.groups += len(plan.groups)


_LAYOUT_KEYS = ("query_tile", "key_mode", "key_tile", "pad", "layout")
KERNELS = ("auto", "native", "matmul")


def _kernel(form: SoftmaxForm | None, asked: str) -> tuple[str, str]:
    """(the kernel calls run: "native", "matmul" or "dense", why)."""
    if form is None:
        return "dense", "dense fallback"
    if asked == "matmul":
        return "matmul", "kernel='matmul': matmul, score map and softmax per chunk"
    if form.linear_scale is None:
        maps = ", ".join(s.target for s in form.score_maps)
        return "matmul", f"the score map ({maps}) is not a scale: matmul, map and softmax"
    if not native_available():
        return "matmul", f"{unavailable_reason()}: matmul and softmax per chunk"
    return "native", ("the score map is a scale: the native kernel (online softmax per "
                      "query tile; float64 inputs run the matmul kernel)")  # fmt: skip


def _refuse_grad(cascade: str, tensors: dict[str, torch.Tensor]) -> None:
    """The block-sparse path writes into buffers (``out=``), which autograd cannot track."""
    if not torch.is_grad_enabled():
        return
    for name, tensor in tensors.items():
        if tensor.requires_grad:
            raise TypeError(f"@{cascade}: input {name!r} requires grad, but the torch target "
                            "has no backward; call it under torch.no_grad()")  # fmt: skip


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16).hexdigest()
    return f"{tuple(data.shape)}:{digest}"


def _input_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    floating = [t.dtype for t in tensors.values() if t.is_floating_point()]
    return floating[0] if floating else torch.float32
