"""A cheap, switchable int8 simulation of a PT2E graph: per-layer sensitivity without one conversion per layer.

The model is exported once with a dynamic batch, prepared with the toolchain's own PT2E
quantizer (so observers sit exactly where the toolchain quantizes) and calibrated once,
batched. Every observer is then replaced by a fake-quantize module that can be switched
off. "Layer L in float" is the same quantizer with L left unannotated (targets/pt2e.py
`leave_float`, applied to the quantizer's annotation of the whole graph): a walk over the
graph, no calibration, that tells which tensors would still be quantized; those
fake-quantizers stay on, the others go off.

Why this is faithful enough to choose with: observers only watch float values during
calibration, so a tensor's scale does not depend on which other layers are quantized.
What it leaves out is each runtime's integer rounding inside kernels; the fallback search
therefore checks every decision on the real artifact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from dermmobile.quantization.bias_correction import WeightRange, grid_of
from dermmobile.targets.base import FULL_WEIGHT_RANGE
from dermmobile.targets.pt2e import build_quantizer, is_layer, layer_name, leave_float


@dataclass(frozen=True)
class Layer:
    """A quantizable layer (convolution or linear) of the model."""

    name: str  # module path, e.g. "_blocks.3._depthwise_conv"
    kind: str  # conv | depthwise | linear
    macs: int  # multiply-accumulates for one image


def _layers(graph_module) -> list[Layer]:
    layers = []
    for node in graph_module.graph.nodes:
        if not is_layer(node):
            continue
        out = node.meta["val"].shape
        weight = node.args[1].meta["val"].shape
        per_output = int(np.prod(weight[1:]))  # in_channels / groups x kernel area, or in_features
        if node.target.__name__.startswith("linear"):
            kind, positions = "linear", int(np.prod(out[1:-1])) if len(out) > 2 else 1
            macs = positions * int(out[-1]) * per_output
        else:
            groups = node.args[6] if len(node.args) > 6 else 1
            kind = "depthwise" if groups > 1 and groups == out[1] else "conv"
            macs = int(np.prod(out[1:])) * per_output
        layers.append(Layer(layer_name(node), kind, macs))
    return layers


def model_layers(model, example) -> list[Layer]:
    """The quantizable layers of `model` in graph order, with their MACs for one image of `example`'s shape."""
    import torch

    return _layers(torch.export.export(model.eval(), (example[:1],), strict=False).module())


def float_share(layers: list[Layer], float_layers) -> float:
    """Share of the model's MACs computed by the layers left in float."""
    total = sum(layer.macs for layer in layers)
    return sum(layer.macs for layer in layers if layer.name in set(float_layers)) / total if total else 0.0


class _SwitchableFakeQuant:
    """Builds a torch module from a calibrated observer: fake-quantizes with its scale, or passes through."""

    @staticmethod
    def make(observer):
        import torch

        class SwitchableFakeQuant(torch.nn.Module):
            def __init__(self):
                super().__init__()
                scale, zero_point = observer.calculate_qparams()
                self.register_buffer("scale", scale.detach().float().reshape(-1))
                self.register_buffer("zero_point", zero_point.detach().to(torch.int32).reshape(-1))
                self.per_channel = observer.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
                self.axis = int(getattr(observer, "ch_axis", 0))
                self.quant_min, self.quant_max = int(observer.quant_min), int(observer.quant_max)
                self.scale_value, self.zero_point_value = float(self.scale[0]), int(self.zero_point[0])
                # 1.0f / scale in float32, as torch's fake-quantize kernel computes it
                self.inverse_scale = float(torch.tensor(1.0) / self.scale[0])
                self.enabled = True
                self.constant: tuple | None = None  # (float input, its fake-quantized value): weights, computed once

            def forward(self, x):
                if not self.enabled:
                    return x
                if self.constant is not None and self.constant[0] is x:
                    return self.constant[1]
                quantized = self._fake_quantize(x)
                if not x.requires_grad and x.dim() > 1 and self.per_channel:  # weights do not change between calls
                    self.constant = (x, quantized)
                return quantized

            def _fake_quantize(self, x):
                if self.per_channel:
                    return torch.fake_quantize_per_channel_affine(
                        x, self.scale, self.zero_point, self.axis, self.quant_min, self.quant_max
                    )
                # torch.fake_quantize_per_tensor_affine's arithmetic (x times the float32 inverse scale, rounded half
                # to even, clamped, times the scale), as a product and five in-place passes: the same values (tested), 5-9x
                # faster on activations here. Torch's kernel also builds a gradient mask; it took two thirds of
                # the per-layer sensitivity time.
                y = torch.mul(x, self.inverse_scale)
                return (
                    y.round_()
                    .add_(self.zero_point_value)
                    .clamp_(self.quant_min, self.quant_max)
                    .sub_(self.zero_point_value)
                    .mul_(self.scale_value)
                )

        return SwitchableFakeQuant()


def _quantized_tensors(graph_module) -> set[str]:
    """Names of the nodes whose output some annotation quantizes (as producer output or as a consumer's input)."""
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    names = set()
    for node in graph_module.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is None:
            continue
        if annotation.output_qspec is not None:
            names.add(node.name)
        names.update(source.name for source, spec in annotation.input_qspec_map.items() if spec is not None)
    return names


def _float_parameters(graph_module, float_model) -> dict[str, list]:
    """For each layer of `graph_module` whose weight or bias differs in `float_model`: (node, tensor, (rounded,
    float)) of each such parameter, the graph's own tensor first. Swapped in place (`Simulation._switch`), so a run
    that reuses another run's values (`Simulation.each`) sees the swap through the same tensor objects.

    Why: the toolchain is handed `model` with int8-rounded weights (GPTQ moves them onto the grid, bias correction
    changes the biases), but a layer the fallback leaves float keeps its float ones in the real file
    (exporter.prepare_int8_weights skips it). Switching off the weight's fake-quantizer alone gives back nothing
    (GPTQ's weights are on the grid already), so without this a layer's simulated gain was its activations' alone:
    on Lite0 the depthwise layers, whose few weights per channel round worst, ranked low."""
    import torch

    originals = dict(float_model.named_modules())
    found: dict[str, list] = {}
    for node in graph_module.graph.nodes:
        name = layer_name(node) if is_layer(node) else None
        if name is None or name not in originals:
            continue
        for argument, field in ((node.args[1], "weight"), (node.args[2] if len(node.args) > 2 else None, "bias")):
            while isinstance(argument, torch.fx.Node) and argument.op == "call_module":
                argument = argument.args[0]  # the weight's fake-quantizer: the parameter is its input
            original = getattr(originals[name], field, None)
            if not isinstance(argument, torch.fx.Node) or argument.op != "get_attr" or original is None:
                continue
            owner, _, attribute = argument.target.rpartition(".")
            tensor = getattr(graph_module.get_submodule(owner), attribute)
            if tensor.shape == original.shape and not torch.equal(tensor, original):
                found.setdefault(name, []).append((argument, tensor, (tensor.detach().clone(), original.detach().clone())))
    return found


def _downstream(nodes) -> set:
    """`nodes` and every node that reads, directly or not, what they compute."""
    found, waiting = set(), list(nodes)
    while waiting:
        node = waiting.pop()
        if node not in found:
            found.add(node)
            waiting.extend(node.users)
    return found


class Simulation:
    """The calibrated, switchable fake-quant graph of one toolchain's quantizer."""

    def __init__(self, model, toolchain: str, calibration: np.ndarray, observer: str = "histogram", batch: int = 16,
                 clamp: bool | None = None, weight_range: WeightRange = FULL_WEIGHT_RANGE, float_model=None):  # fmt: skip
        """`model`: what the toolchain quantizes (its weights rounded already, by GPTQ or bias correction);
        `float_model`: the same model before that rounding, whose weights and biases a layer left float gets back
        (see `_float_parameters`); None when `model`'s weights are the float ones."""
        import torch
        from torch.export import Dim
        from torchao.quantization.pt2e.observer import ObserverBase
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_, _fuse_linear_bn_

        self.toolchain, self.observer, self.batch, self.clamp = toolchain, observer, batch, clamp
        example = torch.from_numpy(np.ascontiguousarray(calibration[:2], dtype=np.float32))
        exported = torch.export.export(
            model.eval(), (example,), dynamic_shapes=({0: Dim("batch", min=1, max=4096)},), strict=False
        ).module()
        self.layers = _layers(exported)
        # The graph the quantizer annotates, prepared the way prepare_pt2e prepares its own copy,
        # so that node names match the observers' inputs.
        self._annotated = copy.deepcopy(exported)
        _fuse_conv_bn_(self._annotated)
        _fuse_linear_bn_(self._annotated)
        # The grid of most layers, and the layers whose grid differs (onnxruntime's depthwise ones, targets/onnx.py).
        usual = grid_of(weight_range, None)
        kinds = (torch.nn.Conv2d, torch.nn.Linear)
        own = {name: grid_of(weight_range, module) for name, module in model.named_modules() if isinstance(module, kinds)}
        grids = {"weight_range": usual, "layer_ranges": {name: grid for name, grid in own.items() if grid != usual}}
        quantizer = build_quantizer(toolchain, observer=observer, clamp=clamp, **grids)
        self._annotated = quantizer.transform_for_annotation(self._annotated)
        self.graph = prepare_pt2e(exported, quantizer)
        self._run(self.graph, calibration)
        self.switches: dict[str, list] = {}
        for node in list(self.graph.graph.nodes):
            module = getattr(self.graph, str(node.target), None) if node.op == "call_module" else None
            if not isinstance(module, ObserverBase):
                continue
            source = node.args[0]
            while source.op == "call_module" and isinstance(getattr(self.graph, str(source.target), None), ObserverBase):
                source = source.args[0]  # a second observer on the same tensor
            switch = _SwitchableFakeQuant.make(module)
            setattr(self.graph, str(node.target), switch)
            self.switches.setdefault(source.name, []).append(switch)
        # Annotating runs the quantizer's pattern matchers (seconds on Lite0); do it once and derive
        # each float set by removing annotations the way the quantizer's leave_float step would.
        from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

        build_quantizer(toolchain, observer=observer, clamp=clamp, **grids).annotate(self._annotated)
        self._full = {node: node.meta.get(Q_ANNOTATION_KEY) for node in self._annotated.graph.nodes}
        full = self.quantized_tensors(frozenset())
        unknown = set(self.switches) - full
        if unknown:  # the two graphs must name the same tensors, or switching would be wrong
            raise RuntimeError(f"simulation: observers on tensors the annotation does not name: {sorted(unknown)[:5]}")
        self.parameters = _float_parameters(self.graph, float_model) if float_model is not None else {}
        self._float_now: frozenset[str] = frozenset()

    def quantized_tensors(self, float_layers: frozenset[str]) -> set[str]:
        """Which tensors the toolchain would quantize with `float_layers` left in float."""
        from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

        for node, annotation in self._full.items():
            if annotation is None:
                node.meta.pop(Q_ANNOTATION_KEY, None)
            else:
                node.meta[Q_ANNOTATION_KEY] = annotation
        leave_float(self._annotated, float_layers)
        return _quantized_tensors(self._annotated)

    def logits(self, images: np.ndarray, float_layers=frozenset()) -> np.ndarray:
        """Simulated int8 logits with `float_layers` in float (an empty set: everything quantized)."""
        self._switch(self.quantized_tensors(frozenset(float_layers)), frozenset(float_layers))
        try:
            return self._run(self.graph, images)
        finally:
            self._restore(frozenset())  # the graph keeps its rounded weights between calls

    __call__ = logits

    def each(self, images: np.ndarray, float_sets: list[frozenset[str]], memory: int = 1 << 30, log=None) -> list[np.ndarray]:
        """`logits(images, s)` for each float set s (up to float rounding: batches of other sizes), in less time:
        per batch, the graph runs once with everything quantized, keeping every node's output, and for each set
        only the nodes downstream of a quantizer it switches run again (the others compute the same values either
        way). Lite0's per-layer sensitivity on 32 photos: 3.0x faster (benchmarks/sensitivity_speed.py).
        `memory`: bytes of node outputs held at once; the first batch (2 photos) measures a photo's share and sizes
        the next. `log`: told after each batch."""
        import torch
        from torch.fx import Interpreter

        nodes = list(self.graph.graph.nodes)
        node_of = {id(getattr(self.graph, str(node.target), None)): node for node in nodes if node.op == "call_module"}
        everything = self.quantized_tensors(frozenset())
        plans = []
        for float_layers in float_sets:
            quantized = self.quantized_tensors(frozenset(float_layers))
            switched = [node_of[id(switch)] for name, switches in self.switches.items() for switch in switches
                        if (name in quantized) != (name in everything)]  # fmt: skip
            restored = [node for name in float_layers for node, _, _ in self.parameters.get(name, [])]
            plans.append((quantized, frozenset(float_layers), _downstream(switched + restored)))
        outputs: list[list] = [[] for _ in float_sets]
        first, batch = 0, 2
        with torch.no_grad():
            while first < len(images):
                inputs = torch.from_numpy(np.ascontiguousarray(images[first : first + batch], dtype=np.float32))
                first += len(inputs)
                self._switch(everything, frozenset())
                full = Interpreter(self.graph, garbage_collect_values=False)
                quantized_logits = full.run(inputs).float()
                held = sum(value.nbytes for node, value in full.env.items()
                           if isinstance(value, torch.Tensor) and node.op != "get_attr")  # fmt: skip
                batch = int(min(16, max(1, memory * len(inputs) // max(held, 1))))
                for output, (quantized, float_layers, rerun) in zip(outputs, plans):
                    if not rerun:
                        output.append(quantized_logits)
                        continue
                    self._switch(quantized, float_layers)
                    kept = {node: value for node, value in full.env.items() if node not in rerun}
                    output.append(Interpreter(self.graph).run(inputs, initial_env=kept).float())
                if log is not None:
                    log(f"simulated {len(float_sets)} float sets on {first} of {len(images)} images")
            self._restore(frozenset())
        return [torch.cat(output).numpy() if output else np.zeros((0, 0), np.float32) for output in outputs]

    def _switch(self, quantized: set[str], float_layers: frozenset[str]) -> None:
        """Fake-quantize the tensors named in `quantized`, pass the others through; give the layers in
        `float_layers` their float weights and biases back (`_float_parameters`), the others their rounded ones."""
        for name, switches in self.switches.items():
            for switch in switches:
                switch.enabled = name in quantized
        self._restore(float_layers)

    def _restore(self, float_layers: frozenset[str]) -> None:
        """Float weights and biases for the layers in `float_layers`, rounded ones for the others (in place)."""
        import torch

        wanted = frozenset(float_layers) & self.parameters.keys()
        with torch.no_grad():
            for name in self._float_now ^ wanted:
                for _, tensor, (rounded, original) in self.parameters[name]:
                    tensor.copy_(original if name in wanted else rounded)
        self._float_now = wanted

    def _run(self, graph, images: np.ndarray) -> np.ndarray:
        import torch

        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch], dtype=np.float32))
                outputs.append(graph(batch).float())
        return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)
