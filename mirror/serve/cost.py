"""What an operation will cost, estimated from the document before any of it runs.

GraphQL lets one small document ask for a great deal: twenty aliases of a 1,000-run listing, a
listing inside every run of a listing, fragments spread into each other. The estimate counts the
values an operation asks for: every field once per item of the listings around it, a listing's
length being its ``first`` (50 when absent, clamped to the page cap as the resolvers clamp it).
The walk stops as soon as the limit is passed, so a document built to expand exponentially
costs no more to refuse than one at the limit.

History is not estimated here: clients ask ``samples: 1000000`` to mean "every row" of a run that
has 200, so only the answer itself can tell; its size is metered while it is built (the
response limit) and its time bounded by the request's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

from mirror.serve.errors import RequestError
from mirror.serve.limits import MAX_SAME_FIELD
from mirror.serve.resolvers import page_size

#: list fields whose length is a page: ``first``, as the resolvers read it (``page_size``)
_PAGED = frozenset({"runs", "models", "teams"})


class CostError(RequestError):
    """An operation refused before it runs: too costly, or a field under too many aliases."""


class _Walk:
    def __init__(
        self,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        limit: int,
    ) -> None:
        self.fragments = fragments
        self.variables = variables
        self.limit = limit
        self.total = 0

    def fields(self, selection_set: SelectionSetNode) -> Iterator[FieldNode]:
        """The fields of a selection set with its fragments spread in."""
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                yield selection
            elif isinstance(selection, InlineFragmentNode):
                yield from self.fields(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                fragment = self.fragments.get(selection.name.value)
                if fragment is not None:
                    yield from self.fields(fragment.selection_set)

    def selection(self, selection_set: SelectionSetNode, multiplier: int) -> None:
        names: dict[str, set[str]] = {}
        for field in self.fields(selection_set):
            name = field.name.value
            keys = names.setdefault(name, set())
            keys.add(field.alias.value if field.alias else name)
            if len(keys) > MAX_SAME_FIELD:
                raise CostError(
                    f"the field {name!r} is asked for under {len(keys)} names (aliases) in one "
                    f"selection; the server allows {MAX_SAME_FIELD}"
                )
            items = multiplier * max(self.length(field), 1)
            self.total += items
            if self.total > self.limit:
                raise CostError(
                    f"the operation asks for more than the server's limit of {self.limit:,} "
                    "values (listings multiply the fields inside them); ask for smaller "
                    "pages (first) or fewer aliases"
                )
            if field.selection_set is not None:
                self.selection(field.selection_set, items)

    def length(self, field: FieldNode) -> int:
        """How many items a listing asks for (1 for any other field)."""
        if field.name.value not in _PAGED:
            return 1
        first = None
        for argument in field.arguments or ():
            if argument.name.value == "first":
                first = self.value(argument.value)
        if isinstance(first, bool) or not isinstance(first, int):
            first = None  # absent, or a value the argument's type will refuse
        return page_size(first)

    def value(self, node: object) -> object:
        if isinstance(node, VariableNode):
            return self.variables.get(node.name.value)
        if isinstance(node, IntValueNode):
            return int(node.value)
        return None


def check_cost(
    operation: OperationDefinitionNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
    limit: int,
) -> int:
    """The operation's estimated cost; :class:`CostError` past ``limit`` or the alias cap."""
    walk = _Walk(fragments, variables, limit)
    walk.selection(operation.selection_set, 1)
    return walk.total
