"""A uint8-I/O twin of an int8-I/O TFLite artifact, for runtimes that take no int8 tensors.

LiteRT.js 2.5.3 (the browser runtime) exchanges float32, int32 and uint8 tensors only: its
public API refuses a model whose input or output is int8 (`Element type INT8 is not
supported`). The twin keeps the int8 body byte for byte and adds one QUANTIZE operator at
each end: uint8 input (same scale, zero point + 128) -> int8, and int8 -> uint8 output.
With equal scales and zero points 128 apart, TFLite's requantization is an exact shift of
128, so the twin computes what the int8 artifact computes: an app quantizes the image as
for the int8 artifact and adds 128, and dequantizes the output with the uint8 zero point.
`dermmobile web` checks that on every golden image (Python, then the browser).

The file is edited through the TFLite flatbuffer schema that ai-edge-litert ships
(`ai_edge_litert.schema_py_generated`, the object API ai-edge-quantizer also uses).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dermmobile.errors import BadInputError, require

ZERO_POINT_SHIFT = 128  # int8 [-128, 127] -> uint8 [0, 255]
# QUANTIZE version 2 reads int8/uint8 inputs (requantization); LiteRT's kernels register 1..3.
QUANTIZE_VERSION = 2


def uint8_io_bytes(content: bytes) -> bytes:
    """The .tflite bytes of the uint8-I/O twin of an int8-I/O model (one subgraph, one input, one output)."""
    require("flatbuffers", "tflite")
    import flatbuffers

    schema = require("ai_edge_litert.schema_py_generated", "tflite")
    if content[4:8] != b"TFL3":
        raise BadInputError("not a readable TFLite flatbuffer (no TFL3 file identifier); re-export the artifact")
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    except Exception as exc:  # flatbuffers raises whatever a bad offset leads to
        raise BadInputError(f"not a readable TFLite flatbuffer ({type(exc).__name__}: {exc}); re-export the artifact") from None
    if len(model.subgraphs or []) != 1:
        raise BadInputError(f"the uint8-I/O twin needs a model with one subgraph, this one has {len(model.subgraphs or [])}")
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise BadInputError(
            f"the uint8-I/O twin needs one input and one output, got {len(graph.inputs)} and {len(graph.outputs)}"
        )
    old_in, old_out = int(graph.inputs[0]), int(graph.outputs[0])
    for index in (old_in, old_out):
        tensor = graph.tensors[index]
        quant = tensor.quantization
        if tensor.type != schema.TensorType.INT8 or quant is None or quant.scale is None or len(quant.scale) != 1:
            raise BadInputError(
                f"tensor {tensor.name!r} is not a per-tensor quantized int8 tensor; only int8-I/O artifacts get a uint8 twin"
            )
    opcode = _quantize_opcode(model, schema)
    new_in = _uint8_twin(model, graph, old_in, schema)
    new_out = _uint8_twin(model, graph, old_out, schema)
    graph.operators = [
        _quantize_op(opcode, new_in, old_in, schema),
        *graph.operators,
        _quantize_op(opcode, old_out, new_out, schema),
    ]
    graph.inputs, graph.outputs = [new_in], [new_out]
    for signature in model.signatureDefs or []:
        for entry in signature.inputs or []:
            entry.tensorIndex = new_in if entry.tensorIndex == old_in else entry.tensorIndex
        for entry in signature.outputs or []:
            entry.tensorIndex = new_out if entry.tensorIndex == old_out else entry.tensorIndex
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def uint8_io_manifest(manifest, content: bytes, file: str):
    """The twin's manifest: the int8 artifact's, with uint8 I/O, the new file's name, and where it came from."""
    import hashlib

    def shifted(spec):
        return replace(spec, dtype="uint8", zero_point=int(spec.zero_point) + ZERO_POINT_SHIFT)

    sha256 = hashlib.sha256(content).hexdigest()
    parity = manifest.parity
    if parity is not None:
        # Parity was measured on the int8 file; it holds for the twin because `dermmobile web` refuses a twin
        # whose logits are not exactly the int8 file's. The binding check then sees the twin's own hash.
        parity = {**parity, "artifact_sha256": sha256, "measured_on": {"file": manifest.file, "sha256": manifest.sha256}}
    twin = replace(
        manifest,
        file=file,
        sha256=sha256,
        parity=parity,
        bytes=len(content),
        input=shifted(manifest.input),
        output=shifted(manifest.output),
        notes={
            **manifest.notes,
            "uint8_io_twin_of": {"file": manifest.file, "sha256": manifest.sha256},
            "uint8_io": "the int8 artifact with one QUANTIZE op at each end (uint8 <-> int8, same scale, zero point +128): "
            "LiteRT.js takes no int8 tensors",
        },
    )
    return twin


def write_uint8_io_twin(artifact, out_file: Path):
    """Write the twin of a verified int8-I/O .tflite `artifact` to `out_file` (a new path); return its Manifest."""
    from dermmobile.fsutil import atomic_write_bytes

    content = uint8_io_bytes(Path(artifact.path).read_bytes())
    atomic_write_bytes(Path(out_file), content)
    return uint8_io_manifest(artifact.manifest, content, Path(out_file).name)


def needs_uint8_io_twin(manifest) -> bool:
    return manifest.format == "tflite" and "int8" in (manifest.input.dtype, manifest.output.dtype)


def _quantize_opcode(model, schema) -> int:
    for index, code in enumerate(model.operatorCodes):
        if code.builtinCode == schema.BuiltinOperator.QUANTIZE and not code.customCode and code.version >= QUANTIZE_VERSION:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.QUANTIZE
    code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE  # < 127: the old field holds it too
    code.version = QUANTIZE_VERSION
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _uint8_twin(model, graph, index: int, schema) -> int:
    """Append a uint8 tensor shaped like tensor `index`, same scale, zero point + 128, with its own empty buffer."""
    source = graph.tensors[index]
    quant = schema.QuantizationParametersT()
    quant.scale = [float(source.quantization.scale[0])]
    quant.zeroPoint = [int(source.quantization.zeroPoint[0]) + ZERO_POINT_SHIFT]
    tensor = schema.TensorT()
    tensor.shape = [int(d) for d in source.shape]
    tensor.shapeSignature = None if source.shapeSignature is None else [int(d) for d in source.shapeSignature]
    tensor.hasRank = source.hasRank
    tensor.type = schema.TensorType.UINT8
    tensor.name = (source.name or b"") + b"_uint8"
    tensor.quantization = quant
    model.buffers.append(schema.BufferT())
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _quantize_op(opcode: int, source: int, target: int, schema):
    op = schema.OperatorT()
    op.opcodeIndex = opcode
    op.inputs = [source]
    op.outputs = [target]
    op.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
    op.builtinOptions = schema.QuantizeOptionsT()
    return op
