"""Graph passes on the exported ONNX model: clean-up, INT8 quantization, fp16 fusion.

Each pass keeps ALBERT's sharing: a weight used by all layers stays one initializer.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from albert_onnx.errors import ExportError

GELU_FUSIONS = ("Gelu", "FastGelu", "BiasGelu")


def inline_initializer_identities(model: onnx.ModelProto) -> int:
    """Let consumers read shared weights directly instead of through Identity nodes.

    The tracer routes each reuse of a shared weight through an Identity; quantize_dynamic
    does not look through them and leaves those MatMuls in fp32 (40 MB for albert-base).
    """
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    outputs = {out.name for out in graph.output}
    alias = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Identity"
        and node.input[0] in initializers
        and node.output[0] not in outputs
    }
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def put_residual_second(model: onnx.ModelProto) -> int:
    """Order each residual Add before a LayerNorm as (branch, residual).

    onnxruntime's attention fusion looks for the attention branch among the Add's inputs
    and takes the first Add-shaped parent. In layer 0 the residual is itself an Add (the
    128 -> H embedding projection), so the match fails and layer 0 stays unfused unless
    the residual comes second. Add is commutative; the numbers do not change.
    """
    consumers: Counter[str] = Counter(name for node in model.graph.node for name in node.input)
    feeds_layernorm = {
        node.input[0] for node in model.graph.node if node.op_type == "LayerNormalization"
    }
    swapped = 0
    for node in model.graph.node:
        if node.op_type == "Add" and node.output[0] in feeds_layernorm:
            first, second = node.input
            if consumers[first] > 1 and consumers[second] == 1:
                node.input[0], node.input[1] = second, first
                swapped += 1
    return swapped


def projection_nodes(graph: onnx.GraphProto) -> list[str]:
    """The E -> H projection's nodes, which INT8 and fp16 graphs both keep in fp32.

    A least-squares warm start (the distilled default model) leaves this 128 x H weight
    ill-conditioned: entries up to about 2,900 that cancel to outputs below 5, condition
    number about 5e5. Rounding the weights to INT8 or fp16 then wrecks the output (fp16
    alone: error 30 on values of 5). It is 0.1% of the compute, so fp32 costs nothing.
    """
    return [n.name for n in graph.node if "embedding_hidden_mapping_in" in n.name]


def pooling_nodes(graph: onnx.GraphProto) -> list[str]:
    """The in-graph pooling's nodes: everything between last_hidden_state and
    sentence_embedding. Mean pooling sums up to 512 token vectors, past fp16's 65,504 on
    long texts, so the fp16 graph keeps these in fp32 as it does the embedding stage."""
    producer = {out: node for node in graph.node for out in node.output}
    found, pending = {}, ["sentence_embedding"]
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = node
        pending.extend(name for name in node.input if name != "last_hidden_state")
    return list(found)


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """The quantizer logs a generic "run pre-processing" hint on the root logger; silence it
    for the call only, leaving the application's logging as it was."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(source: Path, destination: Path) -> None:
    """Dynamic INT8 for the CPU provider: weights once, activations quantized per batch.

    The embedding tables (Gather) are stored in INT8 too: for albert-base that halves the
    file (23 -> 12 MB) because the V x E table is most of what is left, and on the
    all-MiniLM-L6-v2 teacher it moved STS-B test Spearman by +0.0015 (noise).
    The E -> H projection stays fp32 (see projection_nodes): in the distilled default model
    its per-tensor INT8 weights alone took pooled cosine to PyTorch down to 0.03.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(source, load_external_data=False).graph
    with quiet_root_logger():
        quantize_dynamic(
            source,
            destination,
            op_types_to_quantize=["MatMul", "Gather"],
            nodes_to_exclude=projection_nodes(graph),
            weight_type=QuantType.QInt8,
        )


def optimize_fp16(
    source: Path,
    destination: Path,
    *,
    num_heads: int,
    hidden_size: int,
    layers: int,
    gelu: bool,
) -> dict[str, int]:
    """Fuse attention, skip-LayerNorm and Gelu in every layer, then cast weights to fp16.

    MultiHeadAttention is used rather than the packed Attention op, whose per-layer QKV
    weight copies would undo ALBERT's sharing (122 MB instead of 45 MB for albert-base).
    Inputs and outputs keep int64/float32 so callers need not care about the precision.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_multi_head_attention = True
    optimized = optimize_model(
        str(source),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
        use_gpu=True,
    )
    counts = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    expected = {"MultiHeadAttention": layers, "SkipLayerNormalization": 2 * layers}
    missing = {op: (counts.get(op, 0), n) for op, n in expected.items() if counts.get(op, 0) != n}
    gelus = sum(counts.get(op, 0) for op in GELU_FUSIONS)
    if gelu and gelus != layers:
        missing["Gelu"] = (gelus, layers)
    if missing:
        detail = ", ".join(f"{op} {got}/{want}" for op, (got, want) in missing.items())
        raise ExportError(f"fp16 optimization left layers unfused ({detail})")
    graph = optimized.model.graph
    # The projection's input must be fp32 too: rounding it to fp16 is amplified just the same.
    embedding = [n.name for n in graph.node if n.op_type == "EmbedLayerNormalization"]
    optimized.convert_float_to_float16(
        keep_io_types=True,
        node_block_list=embedding + projection_nodes(graph) + pooling_nodes(graph),
    )
    optimized.save_model_to_file(str(destination))
    return counts
