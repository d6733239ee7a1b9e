"""quantize_weight_only: int4 weights in blocks along K, activations left float; named layers int8.

Each constant [K, N] float32 weight of a MatMul/Gemm becomes int4 with one float32 scale and
one int4 zero point per block of `block_size` values along K of each output column
(`blocks.py`): W ≈ s · (q − z), the block's [min, max] in 16 levels (`symmetric`: z = 0, ±max|W|
in 15), rounded to nearest ("rtn"), with each block's clipping searched ("mse"), or by GPTQ
("gptq": the rounding error of each input channel moved onto those not yet rounded, by the Gram
matrix of the layer's measured inputs).
  ort       MatMulNBits(x, B, scales, zero_points, , bias): B uint8 [N, k_blocks, block_size/2],
            two values per byte (low nibble first) stored as q + 8; zero points z + 8 packed the
            same way [N, ceil(k_blocks/2)], left out when symmetric (8, z = 0, is what the kernel
            assumes); scales [N, k_blocks]; com.microsoft Attention is split: one packed [D, 3D]
            QKV MatMulNBits, a Split, MultiHeadAttention. accuracy_level 0 (the default)
            computes in float32 from the int4 weights: on this CPU as fast as an fp32 MatMul at
            128 rows and above; 4 quantizes x to int8 per block, 1.5x faster at one row (decoding)
            but 1.3x slower at 128 (MatMulNBits microbenchmarks, ONNX Runtime 1.32, 2 threads)
  portable  DequantizeLinear(q int4 [K, N], s [k_blocks, N], z int4 [k_blocks, N], axis=0, block_size) feeding the
            MatMul/Gemm as it was (a Gemm with transB keeps its [N, K] orientation: axis 1);
            blocked DequantizeLinear needs opset 21, below it the weights stay float
`int8_layers` (node names or op types, like `exclude`) are quantized the same way at 8 bits, in
blocks of 512, 256 or 128 (the largest dividing K): MatMulNBits bits=8 (q + 128 in uint8, zero points z + 128 in
uint8 [N, k_blocks]) or an int8 blocked DequantizeLinear; an int8 embedding table takes int8 rows
(the portable form below) on both targets. The fallback of `graphopt quantize --mode weight-only`
raises its most sensitive layers this way instead of keeping them float: about 1.1 bytes a weight
instead of 4, and close to float.
Embedding tables of 256 KiB or more (Gather of a constant [V, D] table, blocks along D; a
BERT's position table counts — int4 is about size):
  ort       GatherBlockQuantized(q int4 [V, D], ids, s [V, ceil(D/b)], z int4, same shape), b =
            `embedding_block_size` (128): only the gathered rows are dequantized; the scales are
            float16 (float16's 11 bits lose nothing next to int4's 4) and the rows it gathers,
            float16 too, are cast to float32. Blocks of 128, not 32: at 32 the scales and zero
            points were a seventh of the table's bytes, and a looked-up row's error barely reaches
            the output (MiniLM gptq: sentence cosine 0.9759 at 32, 0.9762 at 128, the file 0.151x
            → 0.144x; the bytes saved pay for the fallback's 8-bit layers)
  portable  int8 rows with one scale per row, as quantize_dynamic emits them: standard ONNX
            gathers no int4, and dequantizing the whole table before a Gather costs a float
            table per run
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.match import (
    MS_DOMAIN,
    constant_array,
    constant_tensor,
    drop_unused_initializers,
    fresh_node_name,
    infer_types,
    is_op,
    new_initializer,
)
from graphopt.passes.contract import CHANNELS, FALLBACK_REASON, GRAM, Request
from graphopt.passes.quantize._linear import Linear, WeightQuantizer, linear_inputs, name_set
from graphopt.passes.quantize.blocks import gptq_blocks, pack_unsigned, quantize_blocks
from graphopt.passes.registry import register

ALGORITHMS = ("rtn", "mse", "gptq")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
INT4 = ir.DataType.INT4.numpy()
BLOCKED_DEQUANTIZE_OPSET = 21
INT4_IR_VERSION = 10
# 8-bit blocks: the largest of these that divides K (else the last), never below block_size: at
# 8 bits a block's range costs little precision, and scales and zero points for every 32 values
# would add 16% to the layer.
INT8_BLOCK_SIZES = (512, 256, 128)


# Opset 11 as quantize_dynamic, whose int8 rows it reuses; portable int4 needs 21, checked per layer.
@register("quantize_weight_only", min_opset=11)
class QuantizeWeightOnly(WeightQuantizer):
    """Quantize MatMul/Gemm weights and embedding tables to int4 in blocks (activations stay float).

    Not in O1-O3: `graphopt quantize --mode weight-only` and the int4-weight-only preset run it.
    gptq rounds a layer to nearest when no Gram matrix of its input was measured (the report names
    those layers); an ort embedding table, which has none, gets mse's clipping search, unweighted.

    Options:

    - `bits`: 4, the only value accepted (layers at 8 bits are named by `int8_layers`).
    - `block_size`: values per block along K, a power of two ≥ 16.
    - `embedding_block_size`: values per block along a table row (GatherBlockQuantized), the same.
    - `algorithm`: `rtn` (round to nearest); `mse`: per block the clipping ratio, 1.0 down to 0.7,
      with the least squared error, weighted per input channel by the mean squared activations
      (`channel_weights`) when the API measured them; `gptq`: with the measured input Gram matrices.
    - `accuracy_level`: MatMulNBits' compute type, 0 to 4 (0: float32 from the int4 weights; 4: int8
      activations inside the kernel).
    - `symmetric`: no zero points: scale max|w|/7 per block (max|w|/127 at 8 bits).
    - `exclude`: `;`-separated node names or op types kept float; unknown names are an error.
    - `int8_layers`: `;`-separated node names or op types at 8 bits instead (unknown names are an
      error); blocks of 512, 256 or 128, the largest dividing K (128 when none does), never below
    - `block_size`.
    - `embeddings`: quantize embedding tables.
    - `min_embedding_bytes`: the smallest table quantized.
    """

    target_aware = True
    tolerance = "int4"
    handles = "MatMul/Gemm weights and embedding tables; a CNN's Convs take --mode static"
    cost = "bytes"  # what int4 buys is size: the fallback raises the fewest bytes, not the fewest layers
    float32_only = "weight-only int4 quantizes float32 weights"

    def __init__(self, bits: int = 4, block_size: int = 32, algorithm: str = "rtn", accuracy_level: int = 0,
                 exclude: str = "", embeddings: bool = True, min_embedding_bytes: int = 1 << 18,
                 symmetric: bool = False, int8_layers: str = "", embedding_block_size: int = 128) -> None:
        super().__init__(exclude, min_embedding_bytes)
        _check_options(bits, block_size, algorithm, accuracy_level)
        _check_block_size(embedding_block_size, "embedding_block_size")
        self.embedding_block_size = embedding_block_size
        self.int8_layers = name_set(int8_layers)
        self._int8_nodes: set[ir.Node] = set()  # the projections of split Attention nodes named in int8_layers
        self.block_size = block_size
        self.symmetric = symmetric
        self.algorithm = algorithm
        self.accuracy_level = accuracy_level
        self.embeddings = embeddings
        # per weight: its int4 initializers and K (ort), or the DequantizeLinear's output (portable)
        self._quantized: dict[tuple, tuple | ir.Value] = {}
        # (q, scale, zero, K) by weight name and layout: the same on every clone of one model with the
        # same statistics, so kept across the runs the fallback makes of this pass.
        self.blocks_cache: dict[tuple, tuple] = {}

    def ladder(self) -> tuple[str, ...]:
        return ("int4", "int8")

    def measures(self) -> bool:
        return self.algorithm != "rtn"

    def requires(self, model: ir.Model) -> list[Request]:
        return [Request(GRAM if self.algorithm == "gptq" else CHANNELS, linear_inputs(model))] \
            if self.measures() else []

    @property
    def channel_weights(self) -> dict[str, np.ndarray]:
        """[K] mean squared activation per input channel, by the name of the x a MatMul reads: "mse"
        weighs each channel's error by it."""
        return {name: item.mean_square for name, item in self.statistics.channels.items()}

    @property
    def hessians(self) -> dict[str, np.ndarray]:
        """[K, K] Gram matrix xᵀx / count per x name, for "gptq"; without it a layer is rounded to nearest."""
        return {name: item.gram for name, item in self.statistics.channels.items() if item.gram is not None}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._check_exclude(model)
        self._check_names(model, self.int8_layers, "int8 layers")
        infer_types(self, model)
        self._quantized.clear()
        self._unmeasured: list[str] = []
        self._int8_nodes.clear()
        self._projections.clear()
        counts = {"linear": 0, "attention": 0, "embedding": 0, "int8": 0}
        for graph in model.graphs():
            for node in list(graph) if self.target == "ort" else ():
                if node.domain == MS_DOMAIN and node.op_type == "Attention":
                    weight_bytes = getattr(constant_tensor(node.inputs[1]), "nbytes", 0)
                    projections = self._split_attention(model, graph, node)
                    counts["attention"] += bool(projections)
                    if projections:
                        bits = 8 if self._eight_bit(node) else 4
                        self.record(node, f"int{bits}", before=weight_bytes, after=weight_bytes * bits // 32,
                                    reason=self._why_eight(node) if bits == 8 else "")
                    if self._eight_bit(node):
                        self._int8_nodes.update(projections)
            for node in list(graph):
                linear = self._linear(node)
                if linear is not None and self._quantize_linear(model, graph, linear):
                    counts["linear"] += 1
                    counts["int8"] += self._eight_bit(node)
            for node in list(graph) if self.embeddings else ():
                if is_op(node, "Gather") and self._quantize_embedding(model, graph, node):
                    counts["embedding"] += 1
                    counts["int8"] += self._eight_bit(node)
        self._report(counts)
        modified = any(counts.values())
        if modified:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified=modified)

    def _report(self, counts: dict[str, int]) -> None:
        how = f"block {self.block_size}, {'symmetric' if self.symmetric else 'zero points'}, {self.algorithm}"
        if counts["linear"]:
            form = "MatMulNBits" if self.target == "ort" else "DequantizeLinear before the MatMul/Gemm"
            self.changed(f"{counts['linear']} MatMul/Gemm int4 ({how}): {form}")
        if counts["int8"]:
            self.changed(f"{counts['int8']} of them int8 (int8 layers: {', '.join(sorted(self.int8_layers))})")
        if counts["attention"]:
            self.changed(f"{counts['attention']} Attention QKV projections int4 (MultiHeadAttention after)")
        if self._unmeasured:
            self.changed(f"gptq rounded {len(self._unmeasured)} layer(s) to nearest: no calibration statistics "
                         f"for their inputs ({', '.join(self._unmeasured[:3])}{'…' if len(self._unmeasured) > 3 else ''})")
        if counts["embedding"] and self.target == "ort":
            table = f"block {self.embedding_block_size}, {how.split(', ', 1)[1]}".replace("gptq", "mse")
            self.changed(f"{counts['embedding']} embedding tables int4 ({table}): GatherBlockQuantized")
        elif counts["embedding"]:
            self.changed(f"{counts['embedding']} embedding tables int8 (per-row scales; standard ONNX gathers no int4)")

    def needs_opset(self, target: str) -> int:
        return self.min_opset if target == "ort" else BLOCKED_DEQUANTIZE_OPSET  # ort: MatMulNBits at any opset

    # -- linear layers ----------------------------------------------------------------------

    def _eight_bit(self, node: ir.Node) -> bool:
        return node.name in self.int8_layers or node.op_type in self.int8_layers or node in self._int8_nodes \
            or self.backed_off.get(node.name) == "int8"

    def _why_eight(self, node: ir.Node) -> str:
        return FALLBACK_REASON if self.backed_off.get(node.name) == "int8" else "given"

    def _quantize_linear(self, model: ir.Model, graph: ir.Graph, linear: Linear) -> bool:
        node = linear.nodes[0]
        weight_bytes = constant_tensor(linear.weight).nbytes
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        if self.target != "ort" and opset < BLOCKED_DEQUANTIZE_OPSET:
            self.keep(node, f"blocked int4 DequantizeLinear needs opset 21, model has {opset} "
                            "(convert with --opset 21)", before=weight_bytes)
            return False
        bits = self._layout(linear)[0]
        if self.target == "ort":
            self._matmul_nbits(model, graph, linear)
        else:
            self._dequantize_weight(model, graph, linear)
        if node not in self._projections:  # a split Attention's projections: the Attention was recorded
            self.record(node, f"int{bits}", before=weight_bytes, after=weight_bytes * bits // 32,
                        reason=self._why_eight(node) if bits == 8 else "")
        return True

    def _layout(self, linear: Linear) -> tuple[int, int]:
        """(bits, block size) of the layer."""
        if self._eight_bit(linear.nodes[0]):
            k = constant_tensor(linear.weight).shape[1 if linear.transposed else 0]
            block_size = next((size for size in INT8_BLOCK_SIZES if k % size == 0), INT8_BLOCK_SIZES[-1])
            return 8, max(self.block_size, block_size)
        return 4, self.block_size

    def _blocks(self, linear: Linear) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(q [N, k_blocks, block_size], scales and zero points [N, k_blocks], K) of the layer's [K, N] weight."""
        k = constant_tensor(linear.weight).shape[1 if linear.transposed else 0]
        hessian = self.hessians.get(linear.x.name) if self.algorithm == "gptq" else None
        if self.algorithm == "gptq" and np.shape(hessian) != (k, k):
            self._unmeasured.append(linear.nodes[0].name)
            hessian = None
        if not linear.weight.name:
            return self._compute_blocks(linear, hessian)
        key = (linear.weight.name, *self._form(linear))
        if key not in self.blocks_cache:
            self.blocks_cache[key] = self._compute_blocks(linear, hessian)
        return self.blocks_cache[key]

    def _compute_blocks(self, linear: Linear, hessian: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        weight = constant_array(linear.weight)
        weight = weight.T if linear.transposed else weight
        k = weight.shape[0]
        bits, block_size = self._layout(linear)
        if hessian is not None:
            return *gptq_blocks(weight, hessian, block_size, symmetric=self.symmetric, bits=bits), k
        algorithm = "rtn" if self.algorithm == "gptq" else self.algorithm
        return *quantize_blocks(weight, block_size, algorithm, self._channel_weights(linear, k),
                                self.symmetric, bits), k

    def _channel_weights(self, linear: Linear, k: int) -> np.ndarray | None:
        """The [K] importance of the layer's input channels, when "mse" has calibration data for x."""
        weights = self.channel_weights.get(linear.x.name) if self.algorithm == "mse" else None
        if weights is None:
            return None
        weights = np.asarray(weights, np.float32)
        if weights.shape != (k,) or not np.isfinite(weights).all() or (weights < 0).any():
            raise InputError(f"channel weights for {linear.x.name!r} must be {k} finite values >= 0 "
                             f"(one per input channel), got shape {list(weights.shape)}")
        return weights

    def _cache_key(self, graph: ir.Graph, linear: Linear) -> tuple:
        """Layers sharing a weight share its int4 form, unless their inputs weigh channels differently."""
        return id(graph), id(linear.weight), *self._form(linear)

    def _form(self, linear: Linear) -> tuple:
        """What the quantized weight depends on besides its values and the pass's options."""
        weighted = (self.algorithm == "mse" and linear.x.name in self.channel_weights) or \
            (self.algorithm == "gptq" and linear.x.name in self.hessians)
        return linear.transposed, self._layout(linear), linear.x.name if weighted else None

    def _matmul_nbits(self, model: ir.Model, graph: ir.Graph, linear: Linear) -> None:
        key = self._cache_key(graph, linear)
        if key not in self._quantized:
            q, scale, zero, k = self._blocks(linear)
            bits = self._layout(linear)[0]
            base = linear.weight.name or "weight"
            self._quantized[key] = (new_initializer(graph, pack_unsigned(q, bits), f"{base}_int{bits}"),
                                    new_initializer(graph, scale, f"{base}_scale"),
                                    None if self.symmetric else new_initializer(graph, pack_unsigned(zero, bits),
                                                                                f"{base}_zero"), k)
        packed, scale, zero, k = self._quantized[key]
        inputs = [linear.x, packed, scale, zero, None, linear.bias]
        while inputs[-1] is None:
            inputs.pop()
        bits, block_size = self._layout(linear)
        attributes = [ir.AttrInt64("K", k), ir.AttrInt64("N", packed.shape[0]), ir.AttrInt64("bits", bits),
                      ir.AttrInt64("block_size", block_size), ir.AttrInt64("accuracy_level", self.accuracy_level)]
        name = fresh_node_name(graph, f"{linear.nodes[0].name or 'matmul'}/int{bits}")
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        self._replace(graph, linear, [ir.Node(MS_DOMAIN, "MatMulNBits", inputs, attributes, name=name)])

    def _dequantize_weight(self, model: ir.Model, graph: ir.Graph, linear: Linear) -> None:
        """The weight input becomes DequantizeLinear(int4, scales) in the weight's own orientation."""
        node = linear.nodes[0]
        key = self._cache_key(graph, linear)
        if key not in self._quantized:
            q, scale, zero, k = self._blocks(linear)
            q = q.reshape(q.shape[0], -1)[:, :k]
            if not linear.transposed:
                q, scale, zero = q.T, scale.T, zero.T
            bits, block_size = self._layout(linear)
            dtype = INT4 if bits == 4 else np.int8
            base = linear.weight.name or "weight"
            inputs = [new_initializer(graph, q.astype(dtype), f"{base}_int{bits}"),
                      new_initializer(graph, scale, f"{base}_scale")]
            if not self.symmetric:
                inputs.append(new_initializer(graph, zero.astype(dtype), f"{base}_zero"))
            dequantize = ir.Node("", "DequantizeLinear", inputs,
                                 [ir.AttrInt64("axis", 1 if linear.transposed else 0),
                                  ir.AttrInt64("block_size", block_size)],
                                 name=fresh_node_name(graph, f"{node.name or 'matmul'}/dequantize"))
            dequantize.outputs[0].dtype, dequantize.outputs[0].shape = ir.DataType.FLOAT, ir.Shape(q.shape)
            graph.insert_before(node, dequantize)
            self._quantized[key] = dequantize.outputs[0]
            model.ir_version = max(model.ir_version, INT4_IR_VERSION)
        old_weight = linear.weight
        node.replace_input_with(1, self._quantized[key])
        drop_unused_initializers(graph, [old_weight])

    # -- embedding tables -------------------------------------------------------------------

    def _quantize_embedding(self, model: ir.Model, graph: ir.Graph, node: ir.Node) -> bool:
        tensor = self._embedding_table(node)
        if tensor is None:
            return False
        if self.target == "ort" and not self._eight_bit(node):
            self._gather_block_quantized(model, graph, node, tensor)
            self.record(node, "int4", before=tensor.nbytes, after=tensor.nbytes // 8)
        else:
            reason = self._why_eight(node) if self._eight_bit(node) else "standard ONNX gathers no int4"
            self._int8_rows(graph, node, tensor, reason=reason)
        return True

    def _gather_block_quantized(self, model: ir.Model, graph: ir.Graph, node: ir.Node,
                                tensor: ir.TensorProtocol) -> None:
        table = node.inputs[0]
        rows, width = tensor.shape
        algorithm = "mse" if self.algorithm == "gptq" else self.algorithm  # a lookup has no Gram matrix
        key = (table.name, "table", self.embedding_block_size)  # as _blocks: by name, across clones
        blocks = self.blocks_cache.get(key) if table.name else None
        if blocks is None:
            blocks = quantize_blocks(tensor.numpy().T, self.embedding_block_size, algorithm, symmetric=self.symmetric)
            if table.name:
                self.blocks_cache[key] = blocks
        q, scale, zero = blocks
        base = table.name or "table"
        data = new_initializer(graph, q.reshape(rows, -1)[:, :width].astype(INT4), f"{base}_int4")
        zero_points = [] if self.symmetric else [new_initializer(graph, zero.astype(INT4), f"{base}_zero")]
        attributes = [ir.AttrInt64("gather_axis", 0), ir.AttrInt64("quantize_axis", 1),
                      ir.AttrInt64("block_size", self.embedding_block_size), ir.AttrInt64("bits", 4)]
        name = fresh_node_name(graph, f"{node.name or 'gather'}/int4")
        scales = new_initializer(graph, scale.astype(np.float16), f"{base}_scale")
        gather = ir.Node(MS_DOMAIN, "GatherBlockQuantized", [data, node.inputs[1], scales, *zero_points], attributes,
                         name=name)
        gather.outputs[0].dtype = ir.DataType.FLOAT16
        as_float = ir.Node("", "Cast", [gather.outputs[0]], [ir.AttrInt64("to", ir.DataType.FLOAT)],
                           name=fresh_node_name(graph, f"{name}/Cast"))
        ir.convenience.replace_nodes_and_values(graph, node, [node], [gather, as_float], [node.outputs[0]],
                                                [as_float.outputs[0]])
        drop_unused_initializers(graph, [table])
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        model.ir_version = max(model.ir_version, INT4_IR_VERSION)


def _check_options(bits: int, block_size: int, algorithm: str, accuracy_level: int) -> None:
    if bits != 4:
        raise InputError(f"quantize_weight_only: bits {bits} is not supported (4 only)")
    _check_block_size(block_size, "block_size")
    if algorithm not in ALGORITHMS:
        raise InputError(f"quantize_weight_only: unknown algorithm {algorithm!r} (choose {' or '.join(ALGORITHMS)})")
    if accuracy_level not in ACCURACY_LEVELS:
        raise InputError(f"quantize_weight_only: accuracy_level must be 0 to 4, got {accuracy_level}")


def _check_block_size(size: int, option: str) -> None:
    if size < 16 or size & (size - 1):
        raise InputError(f"quantize_weight_only: {option} must be a power of two >= 16, got {size}")
