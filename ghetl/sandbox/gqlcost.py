"""GitHub's GraphQL node limit and rate-limit cost, computed from a validated query before it runs.

From docs.github.com "Rate limits and node limits for the GraphQL API": every connection
multiplies what is selected below it by its ``first``/``last``; a query may request at most
500 000 nodes in total; its cost is the number of requests needed to fill every connection (a
connection under a parent connection of 50 nodes needs 50 requests), divided by 100 and rounded
to the nearest whole number, at least 1.  ``nodes(ids:)`` multiplies by the number of ids.
A query selecting ``rateLimit(dryRun: true)`` is measured but not charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    get_named_type,
    value_from_ast_untyped,
)
from graphql.type import GraphQLInterfaceType, GraphQLObjectType

MAX_NODES = 500_000


@dataclass
class Measure:
    """What a query asks for: total possible nodes, requests to fill its connections, and points."""

    nodes: int = 0
    requests: int = 0
    exceeded_at: str | None = None
    dry_run: bool = False

    @property
    def cost(self) -> int:
        return max(1, int(self.requests / 100 + 0.5))

    def error(self) -> dict[str, Any] | None:
        """The MAX_NODE_LIMIT_EXCEEDED error GitHub answers without running the query."""
        if self.exceeded_at is None:
            return None
        return {"type": "MAX_NODE_LIMIT_EXCEEDED",
                "message": f"By the time this query traverses to the {self.exceeded_at} connection, it is "
                           f"requesting up to {self.nodes:,} possible nodes which exceeds the maximum limit "
                           f"of {MAX_NODES:,}."}


def measure(schema: GraphQLSchema, operation: OperationDefinitionNode,
            fragments: dict[str, FragmentDefinitionNode], variables: dict[str, Any]) -> Measure:
    values = {d.variable.name.value: value_from_ast_untyped(d.default_value)
              for d in operation.variable_definitions or () if d.default_value is not None}
    values.update(variables)
    result = Measure()
    root = schema.get_root_type(operation.operation)
    _walk(schema, root, operation.selection_set, fragments, values, 1, result)
    return result


def _page_size(field: FieldNode, variables: dict[str, Any]) -> int:
    for name in ("first", "last"):
        value = _argument(field, name, variables)
        if isinstance(value, int):
            return max(0, value)
    return 0


def _argument(field: FieldNode, name: str, variables: dict[str, Any]) -> Any:
    for argument in field.arguments or ():
        if argument.name.value == name:
            return value_from_ast_untyped(argument.value, variables)
    return None


def _ids(field: FieldNode, variables: dict[str, Any]) -> int:
    value = _argument(field, "ids", variables)
    return len(value) if isinstance(value, list) else 1


def _walk(schema: GraphQLSchema, parent: Any, selection_set: SelectionSetNode,
          fragments: dict[str, FragmentDefinitionNode], variables: dict[str, Any], multiplier: int,
          result: Measure) -> None:
    for selection in selection_set.selections or ():
        if isinstance(selection, FieldNode):
            _field(schema, parent, selection, fragments, variables, multiplier, result)
        elif isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            target = schema.get_type(condition.name.value) if condition else parent
            _walk(schema, target, selection.selection_set, fragments, variables, multiplier, result)
        elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
            fragment = fragments[selection.name.value]
            _walk(schema, schema.get_type(fragment.type_condition.name.value), fragment.selection_set, fragments,
                  variables, multiplier, result)


def _field(schema: GraphQLSchema, parent: Any, field: FieldNode, fragments: dict[str, FragmentDefinitionNode],
           variables: dict[str, Any], multiplier: int, result: Measure) -> None:
    if not isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)) or field.name.value not in parent.fields:
        return
    named = get_named_type(parent.fields[field.name.value].type)
    inner = multiplier
    if named.name.endswith("Connection"):
        result.requests += multiplier
        inner = multiplier * _page_size(field, variables)
        result.nodes += inner
        if result.nodes > MAX_NODES and result.exceeded_at is None:
            result.exceeded_at = field.name.value
    elif parent is schema.query_type and field.name.value == "nodes":
        inner = multiplier * _ids(field, variables)
    elif parent is schema.query_type and field.name.value == "rateLimit":
        result.dry_run = result.dry_run or _argument(field, "dryRun", variables) is True
    if field.selection_set is not None:
        _walk(schema, named, field.selection_set, fragments, variables, inner, result)
