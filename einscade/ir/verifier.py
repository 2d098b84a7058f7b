"""The IR's rules, checked after construction and after every pass.

Each violation raises ``VerifyError`` at the offending place: undefined or redefined
tensors (SSA), accesses with the wrong number of indices, ranks that are neither kept nor
reduced, reductions over ranks the operand lacks, predicates over unknown ranks, unknown
names and functions, malformed iterative tensors.
"""

from __future__ import annotations

from einscade.ir import ops
from einscade.ir.cascade import Cascade, Einsum, Iterate, size_symbol
from einscade.ir.errors import SourceLoc, VerifyError
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary, accesses, walk
from einscade.ir.printer import print_expr
from einscade.ir.scope import Scope, generation_index


class _Verifier:
    def __init__(self, cascade: Cascade, source: str | None):
        self.cascade = cascade
        self.source = source
        self.scope = Scope(cascade)
        self.defined: set[str] = set()

    def fail(self, message: str, loc: SourceLoc | None) -> VerifyError:
        return VerifyError(message, loc or self.cascade.loc, self.source)

    # -- declarations --------------------------------------------------------------------
    def check_declarations(self) -> None:
        seen: dict[str, str] = {}

        # The size symbol of rank r is r.upper(); only a `size` line may define it.
        rank_of_size = {size_symbol(r): r for r in self.scope.ranks}

        def claim(name: str, kind: str, loc: SourceLoc | None) -> None:
            if name in seen and (seen[name], kind) != ("rank", "rank"):
                raise self.fail(f"{kind} {name!r} clashes with {seen[name]} {name!r}", loc)
            if kind in ("param", "let") and name in rank_of_size:
                rank = rank_of_size[name]
                raise self.fail(f"{kind} {name!r} clashes with the size of rank {rank!r}", loc)
            seen[name] = kind

        for decl in self.cascade.inputs:
            if decl.name in self.defined:
                raise self.fail(f"input {decl.name!r} declared twice", decl.loc)
            self.defined.add(decl.name)
            if len(set(decl.ranks)) != len(decl.ranks):
                raise self.fail(f"input {decl.name!r} repeats a rank", decl.loc)
        for rank in sorted(self.scope.ranks):
            if not rank.islower():
                raise self.fail(
                    f"rank {rank!r} must be lowercase (its size symbol is {size_symbol(rank)!r})",
                    self.rank_loc(rank),
                )
            claim(rank, "rank", None)
        for size in self.cascade.sizes:
            claim(size.name, "size", size.loc)
            self.check_index_expr(size.value, size.loc, allow_ranks=False)
        for param in self.cascade.params:
            claim(param.name, "param", param.loc)
            if param.default is not None:
                self.check_names(param.default, param.loc, allow_ranks=False)
        for grid in self.cascade.grids:
            if len(grid.axes) < 2 or len(set(grid.axes)) != len(grid.axes):
                raise self.fail(f"grid {grid.rank!r} needs two or more distinct axes", grid.loc)
            if grid.rank in self.scope.axis_of:
                raise self.fail(f"grid rank {grid.rank!r} is also an axis", grid.loc)
        for let in self.cascade.lets:
            claim(let.name, "let", let.loc)
            self.check_index_expr(let.value, let.loc, allow_ranks=True)

    def rank_loc(self, rank: str) -> SourceLoc | None:
        """Where ``rank`` is first named: an input, a grid or a statement."""
        for decl in self.cascade.inputs:
            if rank in decl.ranks:
                return decl.loc
        for grid in self.cascade.grids:
            if rank == grid.rank or rank in grid.axes:
                return grid.loc
        for stmt in self.cascade.body:
            if isinstance(stmt, Iterate) and stmt.rank == rank:
                return stmt.loc
        for stmt in self.cascade.einsums():
            if Name(rank) in stmt.indices or (stmt.reduce and rank in stmt.reduce.ranks):
                return stmt.loc
        return None

    # -- names and expressions -----------------------------------------------------------
    def known_name(self, name: str, allow_ranks: bool) -> bool:
        if name in self.scope.lets or name in self.scope.sizes or name in self.scope.params:
            return True
        return allow_ranks and name in self.scope.ranks

    def check_names(self, expr: Expr, loc: SourceLoc | None, allow_ranks: bool) -> None:
        for node in walk(expr):
            if isinstance(node, Name) and not self.known_name(node.id, allow_ranks):
                kind = "name" if allow_ranks else "size or parameter"
                raise self.fail(f"unknown {kind} {node.id!r}", node.loc or loc)

    def check_index_expr(self, expr: Expr, loc: SourceLoc | None, allow_ranks: bool) -> None:
        """Integer index arithmetic: no float literals, only index functions."""
        self.check_names(expr, loc, allow_ranks)
        for node in walk(expr):
            where = node.loc or loc
            if isinstance(node, Num) and isinstance(node.value, float):
                raise self.fail(f"index expression needs integers, got {node.value!r}", where)
            param = self.scope.params.get(node.id) if isinstance(node, Name) else None
            if param is not None and param.kind != "int":
                raise self.fail(
                    f"index expression needs integers, got float param {param.name!r}", where
                )
            if isinstance(node, Call) and node.fn not in ops.INDEX_FUNCTIONS:
                raise self.fail(f"{node.fn}() is not allowed in an index expression", where)
            if isinstance(node, Binary) and node.op in ("/",):
                raise self.fail("index expressions divide with '//', not '/'", where)
            if isinstance(node, Access):
                self.check_lookup(node, where)

    def check_lookup(self, node: Access, loc: SourceLoc | None) -> None:
        decl = self.cascade.input(node.tensor)
        if decl is None:
            raise self.fail(f"index lookup {node.tensor!r} must be an input tensor", loc)
        self.check_arity(node, loc)

    def check_arity(self, node: Access, loc: SourceLoc | None) -> None:
        info = self.scope.tensors.get(node.tensor)
        if info is None or node.tensor not in self.defined:
            raise self.fail(f"undefined tensor {node.tensor!r}", loc)
        if len(node.indices) != len(info.ranks):
            ranks = ", ".join(info.ranks)
            raise self.fail(
                f"tensor {node.tensor!r} has {len(info.ranks)} ranks [{ranks}], "
                f"accessed with {len(node.indices)} indices",
                loc,
            )

    def check_value(self, expr: Expr, loc: SourceLoc | None) -> None:
        self.check_names(expr, loc, allow_ranks=True)
        conditions = [n.args[0] for n in walk(expr) if isinstance(n, Call) and n.fn == "where"]
        # not/and/or are legal inside where()'s condition, nowhere else in a value.
        in_condition = {id(node) for cond in conditions for node in walk(cond)}
        for cond in conditions:
            if not _is_boolean(cond):
                text = print_expr(cond)
                raise self.fail(f"where() needs a comparison, got {text!r}", cond.loc or loc)
        for node in walk(expr):
            where = node.loc or loc
            if isinstance(node, Access):
                self.check_arity(node, where)
                for index in node.indices:
                    self.check_index_expr(index, where, allow_ranks=True)
            logical = isinstance(node, Unary | Binary) and node.op in ("not", "and", "or")
            if logical and id(node) not in in_condition:
                raise self.fail(f"{node.op!r} belongs in a predicate or where()", where)

    def check_predicate(self, expr: Expr, loc: SourceLoc | None) -> None:
        if not _is_boolean(expr):
            raise self.fail(f"predicate must be a comparison, got {print_expr(expr)!r}", loc)
        for node in walk(expr):
            if isinstance(node, Name) and not self.known_name(node.id, allow_ranks=True):
                raise self.fail(f"predicate over unknown rank {node.id!r}", node.loc or loc)
        for comparison in _comparisons(expr):
            self.check_index_expr(comparison, loc, allow_ranks=True)

    # -- statements ----------------------------------------------------------------------
    def check_einsum(self, stmt: Einsum, iterated: str | None) -> None:
        self.check_value(stmt.value, stmt.loc)
        if stmt.predicate is not None:
            self.check_predicate(stmt.predicate, stmt.loc)
        self.check_target(stmt, iterated)
        kept = [i.id for i in stmt.indices if isinstance(i, Name)]
        if iterated is not None:
            kept.append(iterated)
        used = self.scope.ranks_in(stmt.value)
        reduced = stmt.reduce.ranks if stmt.reduce is not None else ()
        for rank in reduced:
            if rank in kept:
                raise self.fail(
                    f"rank {rank!r} is both kept in {stmt.target} and reduced", stmt.loc
                )
            if rank not in used | {self.scope.flat_rank(r) for r in used}:
                raise self.fail(
                    f"reduction over rank {rank!r} that the operand does not have", stmt.loc
                )
        for rank in sorted(used):
            if not self.covers({*kept, *reduced}, rank):
                raise self.fail(
                    f"rank {rank!r} is neither kept in {stmt.target}[...] nor reduced", stmt.loc
                )
        if stmt.predicate is not None:
            space = {*kept, *reduced, *used}
            outside = {r for r in self.scope.ranks_in(stmt.predicate) if not self.covers(space, r)}
            if outside:
                raise self.fail(
                    f"predicate over rank {sorted(outside)[0]!r} outside the iteration space",
                    stmt.loc,
                )

    def covers(self, ranks: set[str], rank: str) -> bool:
        """Whether ``ranks`` pin down ``rank``: the rank itself or, for a grid axis, its grid.

        A grid rank is not pinned by its axes: a statement iterates either the flat rank or
        the axes, so ``S[px, py] = X[p]`` is rejected.
        """
        return rank in ranks or self.scope.axis_of.get(rank) in ranks

    def check_target(self, stmt: Einsum, iterated: str | None) -> None:
        plain = [i for i in stmt.indices if isinstance(i, Name)]
        gens = [i for i in stmt.indices if iterated and generation_index(i, iterated)]
        if len(plain) + len(gens) != len(stmt.indices) or len(gens) > 1:
            raise self.fail(f"{stmt.target}[...] must be indexed by plain rank names", stmt.loc)
        names = [i.id for i in plain]
        if len(set(names)) != len(names):
            raise self.fail(f"{stmt.target}[...] repeats a rank", stmt.loc)
        for name in names:
            if name not in self.scope.ranks:
                raise self.fail(f"unknown rank {name!r} in {stmt.target}[...]", stmt.loc)
        is_update = bool(gens) and generation_index(gens[0], iterated or "") == "next"
        if stmt.target in self.defined and not is_update:
            raise self.fail(f"tensor {stmt.target!r} is defined twice", stmt.loc)
        if is_update and stmt.target not in self.defined:
            raise self.fail(f"{stmt.target} is updated before its generation 0", stmt.loc)
        self.defined.add(stmt.target)

    def check_iterate(self, block: Iterate) -> None:
        if block.rank not in self.scope.ranks:
            raise self.fail(f"unknown rank {block.rank!r}", block.loc)
        inits: set[str] = set()
        updates: set[str] = set()
        for stmt in block.body:
            self.check_generation_reads(stmt, block.rank, inits - updates)
            kinds = [generation_index(i, block.rank) for i in stmt.indices]
            has_plain = Name(block.rank) in stmt.indices
            if "init" in kinds:
                if block.rank in self.scope.ranks_in(stmt.value):
                    raise self.fail(f"generation 0 of {stmt.target} reads {block.rank!r}", stmt.loc)
                inits.add(stmt.target)
            elif "next" in kinds:
                if stmt.target not in inits:
                    raise self.fail(f"{stmt.target} is updated before its generation 0", stmt.loc)
                if stmt.target in updates:
                    raise self.fail(
                        f"{stmt.target} is updated twice in 'iterate {block.rank}'", stmt.loc
                    )
                updates.add(stmt.target)
            elif not has_plain:
                raise self.fail(
                    f"{stmt.target}[...] inside 'iterate {block.rank}' must carry rank "
                    f"{block.rank!r} or a generation index",
                    stmt.loc,
                )
            self.check_einsum(stmt, block.rank if kinds.count(None) < len(kinds) else None)
        missing = inits - updates
        if missing:
            raise self.fail(f"iterative tensor {sorted(missing)[0]!r} is never updated", block.loc)

    def check_generation_reads(self, stmt: Einsum, rank: str, pending: set[str]) -> None:
        """Generation ``rank + 1`` of an iterative tensor exists only after its update."""
        for node in accesses(stmt.value):
            info = self.scope.tensors.get(node.tensor)
            if node.tensor not in pending or info is None or info.generation is None:
                continue
            index = node.indices[info.generation] if info.generation < len(node.indices) else None
            if index is not None and generation_index(index, rank) == "next":
                raise self.fail(
                    f"{node.tensor}[...] reads generation '{rank} + 1' before its update",
                    node.loc or stmt.loc,
                )

    def run(self) -> None:
        self.check_declarations()
        for stmt in self.cascade.body:
            if isinstance(stmt, Iterate):
                self.check_iterate(stmt)
            else:
                self.check_einsum(stmt, None)
        for out in self.cascade.outputs:
            if self.cascade.input(out) is not None:
                raise self.fail(
                    f"output {out!r} is an input, not a computed tensor", self.cascade.loc
                )
            if out not in self.defined:
                raise self.fail(f"output {out!r} is not defined by any statement", self.cascade.loc)


def _is_boolean(expr: Expr) -> bool:
    match expr:
        case Binary(op=op, lhs=a, rhs=b) if op in ops.LOGICAL:
            return _is_boolean(a) and _is_boolean(b)
        case Unary(op="not", operand=x):
            return _is_boolean(x)
        case Binary(op=op) if op in ops.COMPARISONS:
            return True
    return False


def _comparisons(expr: Expr) -> list[Expr]:
    """The integer operands of every comparison in a boolean expression."""
    match expr:
        case Binary(op=op, lhs=a, rhs=b) if op in ops.LOGICAL:
            return _comparisons(a) + _comparisons(b)
        case Unary(op="not", operand=x):
            return _comparisons(x)
        case Binary(lhs=a, rhs=b):
            return [a, b]
    return []


def verify(cascade: Cascade, source: str | None = None) -> Cascade:
    """Check every rule; return the cascade unchanged or raise ``VerifyError``."""
    _Verifier(cascade, source).run()
    return cascade
