"""Declare a node's parameters from its schema and route live changes to the running code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)

from sakura_nexus.params import NodeSchema, Param

_PTYPE = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list: ParameterType.PARAMETER_DOUBLE_ARRAY,
}


def _descriptor(p: Param) -> ParameterDescriptor:
    desc = p.description + (f" [{p.unit}]" if p.unit else "")
    d = ParameterDescriptor(name=p.name, type=_PTYPE[p.type], description=desc, read_only=p.read_only)
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(map(repr, p.choices))
    # rclpy enforces these ranges itself. A range needs both bounds; open ends use the type's extremes.
    if p.type is float and (p.min is not None or p.max is not None):
        d.floating_point_range = [FloatingPointRange(
            from_value=float(p.min if p.min is not None else -1e300),
            to_value=float(p.max if p.max is not None else 1e300), step=0.0)]
    elif p.type is int and (p.min is not None or p.max is not None):
        d.integer_range = [IntegerRange(
            from_value=int(p.min if p.min is not None else -(2**63)),
            to_value=int(p.max if p.max is not None else 2**63 - 1), step=0)]
    return d


class ParamStore:
    """Current parameter values of one node, kept in sync with the ROS parameter server.

    ``store.x`` / ``store["x"]`` read a value; ``store.on_change(fn)`` registers ``fn(changed: dict)``
    that is called after every accepted change so the running model/controller picks it up at once.
    Validation runs in the on-set callback (refusals carry the schema's reason); application runs in
    the post-set callback where rclpy has it (Iron and newer), otherwise right after validation.
    """

    def __init__(self, node, schema: NodeSchema):
        self._node = node
        self._schema = schema
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._values: dict[str, Any] = {}
        for p in schema.params:
            default = p.default
            if p.type is list and not default:       # rclpy types [] as a byte array: declare the type only
                from rclpy.parameter import Parameter

                default = Parameter.Type.DOUBLE_ARRAY
            value = node.declare_parameter(p.name, default, _descriptor(p)).value
            if value is None and p.type is list:
                value = []
            reason = p.validate(value)
            if reason:
                node.get_logger().error(f"parameter override refused ({reason}); using default {p.default!r}")
                value = p.default
            self._values[p.name] = list(value) if p.type is list else value
        node.add_on_set_parameters_callback(self._validate)
        self._has_post = hasattr(node, "add_post_set_parameters_callback")
        if self._has_post:
            node.add_post_set_parameters_callback(self._apply)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def on_change(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(fn)

    def _validate(self, params) -> SetParametersResult:
        known = {p.name: p for p in self._schema.params}
        for prm in params:
            spec = known.get(prm.name)
            if spec is None:
                continue  # use_sim_time, qos overrides: rclpy's own
            value = prm.value
            if spec.type is list and value is not None:
                value = list(value)
            reason = spec.validate(value)
            if reason:
                self._node.get_logger().warning(f"refused parameter change: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        if not self._has_post:
            self._apply(params)
        return SetParametersResult(successful=True)

    def _apply(self, params) -> None:
        changed = {}
        for prm in params:
            if prm.name in self._values:
                value = prm.value
                self._values[prm.name] = list(value) if isinstance(value, (list, tuple)) or \
                    type(value).__name__ == "array" else value
                changed[prm.name] = self._values[prm.name]
        if changed:
            self._node.get_logger().info(f"parameters changed: {changed}")
            for fn in self._listeners:
                fn(changed)
