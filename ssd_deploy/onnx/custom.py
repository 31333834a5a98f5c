"""Nodes of domains that ONNX itself does not know (``com.microsoft``, ``trt.plugins``), for translation functions.

onnxscript creates a node only through an ``OpSchema``; for an unregistered domain there is none, and registering one
globally would change what ``onnx.checker`` accepts for every model in the process. Instead each op gets a private
schema (never registered) that only says how many inputs and outputs the node has; types and shapes of the outputs
come from the traced op's fake implementation, as for every other node torch.onnx emits.
"""

from __future__ import annotations

from onnx.defs import OpSchema
from onnxscript import values

_ATTR_TYPES = {int: OpSchema.AttrType.INT, float: OpSchema.AttrType.FLOAT, str: OpSchema.AttrType.STRING}
_ANY_TENSOR = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)", "tensor(int64)",
               "tensor(int32)", "tensor(bool)"]


def custom_op(domain: str, name: str, inputs: list[str], outputs: list[str], attributes: dict[str, type],
              optional: tuple[str, ...] = ()) -> values.Op:
    """An onnxscript op ``domain::name``; call it like any onnxscript op (None for an omitted optional input).

    Every input and output gets its own type variable: these ops mix activation dtypes with float32 parameters
    and states, and a shared variable would make the tracer reconcile them.
    """
    def param(i: int, n: str, prefix: str):
        option = OpSchema.FormalParameterOption.Optional if n in optional else OpSchema.FormalParameterOption.Single
        return OpSchema.FormalParameter(n, f"{prefix}{i}", param_option=option)

    type_vars = [f"I{i}" for i in range(len(inputs))] + [f"O{i}" for i in range(len(outputs))]
    schema = OpSchema(
        name, domain, 1,
        inputs=[param(i, n, "I") for i, n in enumerate(inputs)],
        outputs=[param(i, n, "O") for i, n in enumerate(outputs)],
        type_constraints=[(t, _ANY_TENSOR, "") for t in type_vars],
        attributes=[OpSchema.Attribute(a, _ATTR_TYPES[t], "", required=False) for a, t in attributes.items()])
    return values.Op(values.Opset(domain, 1), name, schema)
