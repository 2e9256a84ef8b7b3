"""Facts of an ONNX graph, read with the `onnx` package only (no onnxruntime).

Every tensor's shape comes from ONNX shape inference (with data propagation, so shapes computed
from constants resolve too). Parameters are the floating-point constants some node consumes:
initializers, `Constant` nodes and `ConstantOfShape` outputs whose shape is itself constant (the
form the onnx wheel's weight-stripped "light" test models use). BatchNormalization running mean
and variance are statistics, not learned, and are counted apart as buffers; an initializer no
node reads is not counted at all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmscope.document.errors import DocError, MissingExtraError
from lmscope.document.skeleton import new_facts

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_STAT_INPUTS = {"BatchNormalization": (3, 4)}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingExtraError("onnx", "documenting an ONNX graph") from None
    return onnx


def _dims(value_info: Any) -> list[int | str] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            return None
    return dims


def _constants(onnx: Any, graph: Any) -> dict[str, tuple[list[int], bool]]:
    """name -> (shape, is floating point) of every constant tensor in the graph."""
    from onnx import numpy_helper

    consts: dict[str, tuple[list[int], bool]] = {}
    for t in graph.initializer:
        consts[t.name] = (list(t.dims), t.data_type in _FLOAT_TYPES)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = (list(attr.t.dims), attr.t.data_type in _FLOAT_TYPES)
        elif node.op_type == "ConstantOfShape" and node.input and node.input[0] in consts:
            init = next((t for t in graph.initializer if t.name == node.input[0]), None)
            if init is None:
                continue
            shape = [int(v) for v in numpy_helper.to_array(init).ravel()]
            dtype = 1
            for attr in node.attribute:
                if attr.name == "value":
                    dtype = attr.t.data_type
            consts[node.output[0]] = (shape, dtype in _FLOAT_TYPES)
    return consts


def _macs(op: str, node: Any, shapes: dict[str, Any], consts: dict[str, Any]) -> int:
    out = shapes.get(node.output[0]) if node.output else None
    if not out or not all(isinstance(d, int) for d in out):
        return 0
    if op == "Conv" and len(node.input) > 1 and node.input[1] in consts:
        weight = consts[node.input[1]][0]  # [C_out, C_in / groups, k...]
        return math.prod(out) * math.prod(weight[1:])
    if op in ("Gemm", "MatMul") and len(node.input) > 1:
        a = shapes.get(node.input[0])
        if a and isinstance(a[-1], int):
            transposed = any(x.name == "transA" and x.i for x in node.attribute)
            inner = a[-2] if transposed and len(a) >= 2 and isinstance(a[-2], int) else a[-1]
            return math.prod(out) * inner
    return 0


def _spec_shapes(graph: Any, shapes: dict[str, Any]) -> int:
    """Shapes the operator spec fixes but onnx's inference leaves out: Dropout's optional
    `mask` output has its input's shape (opsets 7-11 do not infer it). Returns how many."""
    added = 0
    for node in graph.node:
        if node.op_type != "Dropout" or len(node.output) < 2 or not node.output[1]:
            continue
        if node.output[1] not in shapes and node.input[0] in shapes:
            shapes[node.output[1]] = list(shapes[node.input[0]])
            added += 1
    return added


def onnx_facts(path: Path) -> dict[str, Any]:
    onnx = _onnx()
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises its own DecodeError, or ValueError / OSError
        raise DocError(
            f"{path} is not a readable ONNX model ({type(err).__name__}: {err})"
        ) from None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:
        raise DocError(f"ONNX shape inference failed on {path}: {err}") from None
    graph = inferred.graph
    consts = _constants(onnx, graph)
    shapes: dict[str, Any] = {name: shape for name, (shape, _) in consts.items()}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    ruled = _spec_shapes(graph, shapes)
    stats = {
        node.input[i]
        for node in graph.node
        for i in _STAT_INPUTS.get(node.op_type, ())
        if i < len(node.input)
    }
    counted: set[str] = set()
    rows: list[dict[str, Any]] = []
    ops: dict[str, int] = {}
    params = buffers = 0
    produced_by_const = {"Constant", "ConstantOfShape"}
    for i, node in enumerate(graph.node):
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        if node.op_type in produced_by_const:
            continue
        own = 0
        for name in node.input:
            if name in consts and consts[name][1] and name not in counted:
                counted.add(name)
                size = math.prod(consts[name][0])
                if name in stats:
                    buffers += size
                else:
                    own += size
        params += own
        data_in = next((n for n in node.input if n and n not in consts), None)
        rows.append(
            {
                "path": node.name or f"{node.op_type}_{i}",
                "type": node.op_type,
                "input_shape": shapes.get(data_in) if data_in else None,
                "output_shape": shapes.get(node.output[0]) if node.output else None,
                "parameters": own,
                "macs_per_position": _macs(node.op_type, node, shapes, consts),
                "trainable": None,
            }
        )
    tensors = [o for node in graph.node for o in node.output if o]
    resolved = [t for t in tensors if t in shapes and all(isinstance(d, int) for d in shapes[t])]
    inputs = [vi for vi in graph.input if vi.name not in consts]
    batch = shapes.get(inputs[0].name, [None])[0] if inputs else None
    if isinstance(batch, int) and batch > 1:
        for row in rows:
            row["macs_per_position"] //= batch
    facts = new_facts(path.name, "onnx", str(path), False)
    facts["overview"].update(
        {
            "family": "onnx-graph",
            "task": None,
            "parameters": {"total": params, "trainable": None, "buffers": buffers},
            "dtype": None,
            "file_size_bytes": path.stat().st_size,
        }
    )
    facts["layers"] = {"positions": 1, "macs_unit": "per example", "rows": rows}
    facts["architecture"] = {
        "kind": "ONNX graph",
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": int(model.ir_version),
        "opsets": {o.domain or "ai.onnx": int(o.version) for o in model.opset_import},
        "op_types": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "nodes": len(graph.node),
        "inputs": [{"name": vi.name, "shape": _dims(vi)} for vi in inputs],
        "outputs": [{"name": vi.name, "shape": _dims(vi)} for vi in graph.output],
        "shape_inference": {
            "tensors": len(tensors),
            "resolved": len(resolved),
            "resolved_by_spec_rule": ruled,
        },
    }
    return facts
