"""Every registered target x quantization: export a tiny model, load it back, check parity.

Parametrized over the registry, so a target added without passing these fails CI.
Real-data tests check the int8 gates on ../shared/data photos.
"""

from __future__ import annotations

import platform
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest

from dermmobile.artifact import load_artifact
from dermmobile.checkpoint import load_checkpoint
from dermmobile.errors import MissingBackendError
from dermmobile.exporter import export_request, plan_export, run_plan
from dermmobile.quantization.bias_correction import quantize_weight
from dermmobile.targets import get_target, target_names, valid_combinations
from dermmobile.targets.base import QUANTIZATIONS, TorchRuntime

COMBINATIONS = [(target, quantize) for target, quants in valid_combinations().items() for quantize in quants]
RUNS_HERE = {"coreml": platform.system() == "Darwin"}


def test_every_target_declares_a_valid_contract():
    for name in target_names():
        target = get_target(name)
        assert target.name == name and target.extension.startswith(".")
        assert "none" in target.quantizations and target.quantizations <= set(QUANTIZATIONS)


@pytest.mark.parametrize("name", target_names())
def test_every_target_refuses_bad_requests_before_converting(name, tmp_path):
    """Each target calls ExportRequest.check: an unsupported layout, or int8 with no calibration images."""
    from dermmobile.errors import BadInputError
    from dermmobile.models import build_model
    from dermmobile.targets.base import ExportRequest

    target = get_target(name)
    request = ExportRequest(build_model("tiny_cnn", 3), "tiny_cnn", ["a", "b", "c"], {"resize": 36, "crop": 32},
                            layout="NCWH", out_file=tmp_path / "x")  # fmt: skip
    with pytest.raises(BadInputError, match=f"{name} takes --layout"):
        target.export(request)
    if "int8" in target.quantizations:
        request.layout, request.quantize = "NCHW", "int8"
        for calibration in (None, np.zeros((0, 3, 32, 32), np.float32)):
            request.calibration = calibration
            with pytest.raises(BadInputError, match="--calib-data FOLDER is needed"):
                target.export(request)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("observer", ["distribution", "nope"])
def test_onnx_int8_refuses_an_observer_it_does_not_offer(observer, tmp_path):
    """'distribution' is onnxruntime's, but put Lite0 at 3.6 % agreement: refused like any unknown name, nothing written."""
    from dermmobile.errors import BadInputError
    from dermmobile.models import build_model
    from dermmobile.targets.base import ExportRequest

    request = ExportRequest(build_model("tiny_cnn", 3), "tiny_cnn", ["a", "b", "c"], {"resize": 36, "crop": 32},
                            quantize="int8", out_file=tmp_path / "x.onnx", observer=observer,
                            calibration=np.zeros((4, 3, 32, 32), np.float32))  # fmt: skip
    with pytest.raises(BadInputError, match=f"unknown onnx observer '{observer}'; valid: minmax, entropy, percentile"):
        get_target("onnx").export(request)
    assert list(tmp_path.iterdir()) == []


# tiny_cnn is 95 % convolution weights: onnxruntime's dynamic int8 would leave it float, so it is refused.
REFUSED = {("onnx", "int8-dynamic"): "Use --quantize int8"}


@pytest.mark.parametrize("target, quantize", COMBINATIONS, ids=[f"{t}-{q}" for t, q in COMBINATIONS])
def test_export_load_and_parity(target, quantize, tiny_checkpoint, synthetic_root, tmp_path):
    checkpoint = load_checkpoint(tiny_checkpoint)
    calib = synthetic_root if quantize == "int8" else None
    plan = plan_export(checkpoint, target, quantize, tmp_path, calib_data=calib, calib_count=27, check_data=synthetic_root)
    (outcome,) = run_plan(checkpoint, plan)
    if (target, quantize) in REFUSED:
        assert outcome.exit_code == 2 and REFUSED[target, quantize] in outcome.error and outcome.artifact is None
        return
    assert outcome.ok, outcome.error
    artifact = load_artifact(outcome.artifact.path)
    manifest = artifact.manifest
    assert manifest.format == target and manifest.quantization == quantize
    assert manifest.labels == checkpoint.meta.labels and manifest.preprocess == checkpoint.meta.preprocess
    assert manifest.bytes > 0 and manifest.toolchain["torch"]
    assert (manifest.calibration or {}).get("count") == (27 if quantize == "int8" else None)
    if not RUNS_HERE.get(target, True):
        assert manifest.status == "not-run" and "needs macOS" in manifest.parity["status"]
        with pytest.raises(MissingBackendError, match="macOS"):
            get_target(target).load(artifact.path, manifest)
        return
    assert manifest.status == "passed", manifest.parity
    # load it again, independently of the exporter, and compare with the eager model
    runtime = get_target(target).load(artifact.path, manifest)
    batch = plan.check.arrays[:5]
    ours, reference = runtime.predict(batch), TorchRuntime(checkpoint.model).predict(batch)
    assert ours.shape == reference.shape and ours.dtype == np.float32
    assert (ours.argmax(1) == reference.argmax(1)).all()
    if quantize == "none":
        assert np.abs(ours - reference).max() <= 1e-3
    # Counted in the file: tiny_cnn has 3 convolutions and 1 linear layer.
    counts = manifest.op_counts
    if quantize == "int8":
        # the logits layer ("10", tiny_cnn's linear) stays float by default (Int8Options.float_logits)
        assert (counts["int8"], counts["float"], counts["dynamic"]) == (3, 1, 0) and manifest.float_layers == ["10"]
    elif quantize == "none" and counts is not None:
        assert (counts["int8"], counts["float"]) == (0, 4)


@pytest.mark.parametrize("float_logits", [True, False])
def test_tflite_int8_has_integer_io_with_scale(float_logits, tiny_checkpoint, synthetic_root, tmp_path):
    """--int8-logits: a full-integer file, int8 input and output with their scales. By default the logits layer
    stays float, the converter runs in strict QDQ mode (the only way to keep a layer float), and the file takes and
    gives float32, quantizing the image inside. The search is off: a layer it left float would give the file float
    I/O too, and whether this tiny model's full-integer file passes depends on the CPU (on a 2-core EPYC its int8
    logits flipped 1 of 36 tuning photos and the search kept a layer float); a gate failure still writes the file."""
    from dermmobile.quantization.options import Int8Options

    checkpoint = load_checkpoint(tiny_checkpoint)
    plan = plan_export(checkpoint, "tflite", "int8", tmp_path, calib_data=synthetic_root, calib_count=18, layout="nhwc",
                       int8=Int8Options(float_logits=float_logits, fallback=False))  # fmt: skip
    (outcome,) = run_plan(checkpoint, plan)
    assert outcome.artifact is not None and (outcome.ok or outcome.exit_code == 3), outcome.error
    manifest = outcome.artifact.manifest
    assert manifest.input.layout == "NHWC" and manifest.input.shape == [1, 64, 64, 3]
    if float_logits:
        assert manifest.input.dtype == manifest.output.dtype == "float32" and manifest.float_layers == ["10"]
        assert "float32 input and float32 output" in manifest.notes["int8"]
    else:
        assert manifest.input.dtype == "int8" and manifest.input.scale > 0 and isinstance(manifest.input.zero_point, int)
        assert manifest.output.dtype == "int8" and manifest.output.scale > 0 and manifest.float_layers == []
        assert "int8 input and int8 output" in manifest.notes["int8"]


# Plain int8 (no fallback; GPTQ rounding, logits layer float) of the reference model of the fixture's recipe, on the
# 393 gate photos: TFLite 99.24 %, ExecuTorch 98.47 %, ONNX 98.22 % agreement (README, int8). The floors leave room
# for a model trained on another CPU, and ONNX's for its 7-bit weights on x86 CPUs without VNNI (targets/onnx.py).
INT8_FLOORS = {
    "tflite": {"agreement": 0.95, "top1_drop": 0.02},
    "executorch": {"agreement": 0.95, "top1_drop": 0.02},
    "onnx": {"agreement": 0.90, "top1_drop": 0.03},
}


@pytest.mark.realdata
@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_plain_int8_gates_on_real_photos(target, lite0_checkpoint, real_data, tmp_path):
    """Plain int8 (--no-fallback) judged on real clinical photos, for a Lite0 fine-tuned on them.
    TFLite's plain file is the first attempt of the default export below, and judged there (one conversion less).

    Plain int8 of a 27-class model has near-ties that flip (README "Results"); the test holds
    per-toolchain quality floors with margin, that the gate's verdict matches the numbers,
    and that calibration, tuning and gate photos are disjoint and recorded.
    """
    from dermmobile.quantization.options import Int8Options

    checkpoint = load_checkpoint(lite0_checkpoint)
    plan = plan_export(checkpoint, target, "int8", tmp_path, calib_data=real_data, calib_count=64,
                       int8=Int8Options(fallback=False))  # fmt: skip
    (outcome,) = run_plan(checkpoint, plan)
    manifest = outcome.artifact.manifest
    parity = manifest.parity
    assert manifest.calibration["count"] == 64 and len(manifest.calibration["per_class"]) == 27
    assert manifest.tuning_images["count"] == 192 and parity["images"] == manifest.gate_images["count"] == 713 - 64 - 192
    assert parity["unseen_by_training"]["images"] == 143  # every held-out test photo judges, none chose
    assert not set(plan.check.names) & set(plan.tuning.names)
    floor = INT8_FLOORS[target]
    assert parity["agreement"] >= floor["agreement"], parity["agreement"]
    assert parity["accuracy"] >= parity["reference_accuracy"] - floor["top1_drop"], parity
    should_pass = parity["agreement"] >= 0.98 and parity["reference_accuracy"] - parity["accuracy"] <= 0.01 + 1e-9
    assert (manifest.status == "passed") == should_pass == outcome.ok
    if not should_pass:
        assert outcome.exit_code == 3 and manifest.file in outcome.error and "gate" in outcome.error
    counts = manifest.op_counts  # Lite0: 49 convolutions int8, the linear logits layer float (Int8Options.float_logits)
    assert counts["int8"] == 49 and counts["float"] == 1 and counts["dynamic"] == 0 and manifest.float_layers == ["_fc"]


@pytest.mark.realdata
def test_default_int8_export_of_a_real_model_passes_its_gate(lite0_checkpoint, real_data, tmp_path):
    """The command this tool exists for, on a model trained as a user would (conftest.lite0_run, the default recipe):
    `export --target tflite --quantize int8 --calib-data sd198-27` passes its gate on photos that chose nothing, the
    143 held-out ones among them, and the manifest says what it cost. The reference model of the same recipe passed
    plain (GPTQ rounding, logits float) with 3 flips of 393 where 7 are allowed (README, int8).
    Every option is the default: a smaller search (the ranking on 8 simulated photos and two real attempts) made
    the model this recipe trains on a 2-core AMD EPYC fail by one photo of top-1 (2 float layers, 98.73 %, 1.02
    points), where the default search passes (5 float layers, 99.24 %, 3 flips); its plain file misses the tuning
    photos there (98.96 %), so the search runs, about 7 minutes on 2 cores. On a Xeon the plain file passed. Another
    run of the recipe (two threads, same EPYC) forecast 99.53 % on the tuning photos' own margins and failed the gate
    by one photo; the forecast on the calibration and tuning photos, unseen ones weighted as in the gate
    (fallback.MarginPopulation), read 98.91 %, and the search kept 3.8 % of MACs float and passed (98.98 %)."""
    checkpoint = load_checkpoint(lite0_checkpoint)
    plan = plan_export(checkpoint, "tflite", "int8", tmp_path, calib_data=real_data)
    (outcome,) = run_plan(checkpoint, plan)
    manifest = outcome.artifact.manifest
    parity = manifest.parity
    assert manifest.calibration["count"] == 128 and manifest.calibration["weight_rounding"] == "gptq"
    assert parity["images"] == 713 - 128 - 192 and parity["unseen_by_training"]["images"] == 143
    assert outcome.ok and manifest.status == "passed", outcome.error
    assert parity["agreement"] >= 0.98 and parity["accuracy"] >= parity["reference_accuracy"] - 0.01 - 1e-9, parity
    # What it cost, as the manifest records it: the float layers are the ones the file computes in float.
    assert manifest.float_macs_share <= 0.25 and manifest.fallback["enabled"]
    assert manifest.op_counts["float"] == len(manifest.float_layers) and manifest.op_counts["int8"] == 50 - len(
        manifest.float_layers
    )
    real = [a for a in manifest.fallback["attempts"] if a["source"] == "artifact"]
    assert 1 <= len(real) <= 1 + plan.int8.max_attempts
    plain, floor = real[0], INT8_FLOORS["tflite"]  # the plain file comes first: only the logits layer float
    assert plain["float_layers"] == ["_fc"] and plain["error"] is None
    assert plain["agreement"] >= floor["agreement"] and plain["accuracy_drop"] <= 100 * floor["top1_drop"], plain
    kept = next(a for a in real if sorted(a["float_layers"]) == sorted(manifest.float_layers))
    passing = [a for a in real if a["passed"]]  # on the tuning photos: the cheapest of those, else the best forecast
    built = [a for a in real if a["error"] is None]
    best = (min(passing, key=lambda a: a["float_macs_share"]) if passing
            else max(built, key=lambda a: (a["forecast_agreement"], -a["float_macs_share"])))  # fmt: skip
    assert kept == best


@pytest.mark.parametrize("target", ["tflite", "executorch", "onnx"])
def test_int8_leaves_the_named_layer_float_and_the_file_shows_it(target, tiny_checkpoint, synthetic_root, tmp_path):
    """What the fallback asks for reaches the file: layer "3" (the second convolution) is float, the rest int8."""
    from dermmobile.exporter import export_artifact, int8_op_failures

    checkpoint = load_checkpoint(tiny_checkpoint)
    plan = plan_export(checkpoint, target, "int8", tmp_path, calib_data=synthetic_root, calib_count=18)
    artifact = export_artifact(checkpoint, get_target(target), plan, frozenset({"3"}))
    manifest = artifact.manifest
    assert manifest.float_layers == ["3"]
    assert (manifest.op_counts["int8"], manifest.op_counts["float"]) == (3, 1), manifest.op_counts
    assert int8_op_failures(manifest, "x") == []
    manifest.float_layers = []  # had nobody asked for it, the float layer would fail the int8 check
    assert "is not the int8 artifact that was asked for" in int8_op_failures(manifest, "x")[0]
    runtime = get_target(target).load(artifact.path, manifest)
    batch = plan.check.arrays[:4]
    assert (runtime.predict(batch).argmax(1) == TorchRuntime(checkpoint.model).predict(batch).argmax(1)).all()


@pytest.mark.parametrize("target", ["tflite", "executorch", "onnx"])
def test_int8_refuses_to_leave_float_a_layer_the_model_does_not_have(target, tiny_checkpoint, synthetic_root, tmp_path):
    """A float-layer name that matches no layer is an error, not a file that claims a float layer it does not have
    (the PT2E targets skipped such names silently until 2026-11-28)."""
    from dermmobile.errors import ExportFailedError
    from dermmobile.exporter import export_artifact

    checkpoint = load_checkpoint(tiny_checkpoint)
    plan = plan_export(checkpoint, target, "int8", tmp_path, calib_data=synthetic_root, calib_count=18)
    with pytest.raises(ExportFailedError, match="_blocks.99"):
        export_artifact(checkpoint, get_target(target), plan, frozenset({"3", "_blocks.99"}))


def test_onnx_float_layer_stays_float_when_onnxruntime_optimizes(tiny_checkpoint, synthetic_root, tmp_path):
    """onnxruntime's WeightBiasQuantization (on by default) quantizes, per tensor, the float weights of a convolution
    fed by a per-tensor DequantizeLinear: layer "3" in float would run with int8 weights. The file gives it an input
    that optimizer leaves alone, so every session computes the layer in float."""
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime

    from dermmobile.exporter import export_artifact

    checkpoint = load_checkpoint(tiny_checkpoint)
    plan = plan_export(checkpoint, "onnx", "int8", tmp_path, calib_data=synthetic_root, calib_count=18)
    artifact = export_artifact(checkpoint, get_target("onnx"), plan, frozenset({"3"}))
    batch = plan.check.arrays[:4]

    def run(disabled: list[str]):
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"optimized-{len(disabled)}.onnx")
        session = onnxruntime.InferenceSession(str(artifact.path), options, providers=["CPUExecutionProvider"],
                                               disabled_optimizers=disabled)  # fmt: skip
        return session.run(None, {"image": batch})[0]

    np.testing.assert_array_equal(run([]), run(["WeightBiasQuantization"]))
    optimized = onnx.load(str(tmp_path / "optimized-0.onnx"))
    added = [tensor.name for tensor in optimized.graph.initializer if "_weight_q" in tensor.name]
    assert added == [], f"onnxruntime quantized a float layer's weights: {added}"


@pytest.mark.parametrize("trans_a", [0, 1])
def test_onnx_keep_float_copies_a_gemms_input_per_channel_with_the_same_values(trans_a, tmp_path):
    """The per-channel copy that keeps a float layer float (see the test above) is exact: a float Gemm behind a
    per-tensor DequantizeLinear computes the same values with it, optimizations off. A Gemm with a transposed input
    (its axis 1 is not its channels) is left as it was."""
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from dermmobile.targets.onnx import keep_float

    generator = np.random.default_rng(0)
    shape = [4, 2] if trans_a else [2, 4]
    weights = numpy_helper.from_array(generator.normal(size=(3, 4)).astype(np.float32), "w")
    scale, zero = numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(3, np.int8), "z")
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
         helper.make_node("Gemm", ["dq", "w"], ["y"], name="gemm", transA=trans_a, transB=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [weights, scale, zero],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = generator.normal(size=shape).astype(np.float32)

    def run(model) -> np.ndarray:
        path = tmp_path / "gemm.onnx"
        onnx.save_model(model, str(path))
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    keep_float(model, ["gemm"])
    onnx.checker.check_model(model, full_check=True)
    (copy,) = [node for node in model.graph.node if node.op_type == "DequantizeLinear" and node.name != "dq"] or [None]
    if trans_a:
        assert copy is None
    else:
        assert [a.i for a in copy.attribute if a.name == "axis"] == [1] and model.graph.node[-1].input[0] == copy.output[0]
        scales = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}[copy.input[1]]
        np.testing.assert_array_equal(scales, np.full(4, 0.05, np.float32))
    np.testing.assert_array_equal(run(model), before)


def test_onnx_int8_weight_grid_follows_the_cpu(tmp_path):
    """x86 without VNNI: onnxruntime's uint8 x int8 kernels can saturate, so 7-bit weights; VNNI or ARM: full range."""
    from dermmobile.targets.onnx import int8_saturates

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    machine = "dermmobile.targets.onnx.platform.machine"
    with mock.patch(machine, return_value="x86_64"):
        assert int8_saturates(cpuinfo)
        cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
        assert not int8_saturates(cpuinfo)
        assert int8_saturates(tmp_path / "missing")  # cannot tell: the grid that is safe everywhere
    with mock.patch(machine, return_value="aarch64"):
        assert not int8_saturates(cpuinfo)


def _onnxruntime_int8_error(tmp_path, groups: int, kernel: int, reduce_range: bool) -> float:
    """onnxruntime's static int8 error on a convolution whose weights and inputs all sit at their grid's maximum
    (the case where uint8 x int8 pair sums overflow int16 on x86 without VNNI), relative to the float output."""
    import torch
    from onnxruntime import InferenceSession
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from dermmobile.targets.onnx import _Calibration

    channels = 32
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=groups, bias=False),
                                torch.nn.ReLU()).eval()  # fmt: skip
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    images = np.random.default_rng(0).uniform(0, 6, (4, channels, 6, 6)).astype(np.float32)
    images[0] = 6.0
    torch.onnx.export(model, (torch.from_numpy(images[:1]),), tmp_path / "f.onnx", input_names=["image"],
                      dynamic_axes={"image": {0: "batch"}}, dynamo=False)  # fmt: skip
    quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", _Calibration(images), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    session = InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": images[:1]})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(images[:1])).numpy()
    return float(np.abs(got - want).max() / want.max())


def test_onnxruntime_saturates_where_the_weight_grid_says_and_never_in_depthwise_kernels(tmp_path):
    """The rule behind OnnxTarget.weight_range, measured on the machine running the tests: full-range weights
    saturate onnxruntime's int8 GEMM exactly where int8_saturates() says (AMD EPYC, AVX2 only: off by half the
    output), 7 bits never do, and its depthwise kernel stays within 1 % with full-range weights on every CPU."""
    pytest.importorskip("onnxruntime")
    from dermmobile.targets.onnx import int8_saturates

    full = _onnxruntime_int8_error(tmp_path, groups=1, kernel=1, reduce_range=False)
    assert (full > 0.1) == int8_saturates(), full
    assert _onnxruntime_int8_error(tmp_path, groups=1, kernel=1, reduce_range=True) < 0.01
    for kernel in (3, 5):
        assert _onnxruntime_int8_error(tmp_path, groups=32, kernel=kernel, reduce_range=False) < 0.01


@pytest.mark.parametrize("saturates", [True, False])
def test_onnx_depthwise_weights_keep_the_full_grid_where_the_gemm_gets_seven_bits(saturates, tmp_path):
    """Where onnxruntime's GEMM can saturate, its layers get 7-bit weights and the depthwise convolution keeps 8:
    in GPTQ's rounding, in the file onnxruntime's quantizer writes, and in the simulation that ranks layers."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from dermmobile.quantization.gptq import round_weights
    from dermmobile.targets.base import ExportRequest
    from dermmobile.targets.onnx import REDUCED_RANGE
    from tests.test_bias_correction import _images, _model

    target, images = get_target("onnx"), _images()
    usual = REDUCED_RANGE if saturates else (-127, 127)
    with mock.patch("dermmobile.targets.onnx.int8_saturates", return_value=saturates):
        model, record = round_weights(_model(), images, target.weight_range)
        assert record["layers"] == 3 and record["nearest_channels"] == 0  # GPTQ found every channel's grid
        request = ExportRequest(model, "test", list("abcd"), {"resize": 16, "crop": 16}, quantize="int8",
                                calibration=images, out_file=tmp_path / "model.onnx")  # fmt: skip
        result = target.export(request)
        stop = mock.patch("dermmobile.quantization.simulate.build_quantizer", side_effect=RuntimeError("stop"))
        with stop as build, pytest.raises(RuntimeError, match="stop"):
            target.simulation(request)(images[:2], frozenset())
    assert build.call_args.kwargs["weight_range"] == usual
    assert build.call_args.kwargs["layer_ranges"] == ({"3": (-127, 127)} if saturates else {})
    assert result.notes["weight_bits"] == (7 if saturates else 8)
    assert result.notes.get("weight_bits_8_layers") == (1 if saturates else None)  # the manifest counts the exception
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    widest = {}
    for node in graph.node:  # each convolution's weight: its DequantizeLinear's int8 input
        if node.op_type == "DequantizeLinear" and values.get(node.input[0]) is not None and values[node.input[0]].ndim == 4:
            consumer = next(n for n in graph.node if node.output[0] in n.input)
            widest[consumer.input[1]] = int(np.abs(values[node.input[0]].astype(np.int32)).max())
    assert sorted(widest.values()) == sorted([usual[1], 127]), widest
    for name, module in model.named_modules():  # GPTQ rounded each layer onto that layer's grid
        if hasattr(module, "weight") and name != "1" and name != "4":  # not the (folded) batch norms
            grid = (-127, 127) if name == "3" else usual
            weight = module.weight.detach()
            np.testing.assert_allclose(quantize_weight(weight, *grid).numpy(), weight.numpy(), rtol=1e-6, atol=1e-9)


def test_a_layer_grid_reaches_the_pt2e_weight_observer():
    """build_quantizer's layer_ranges: that layer's weight spec gets its own grid, the others keep weight_range."""
    pytest.importorskip("executorch")
    import torch
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    from dermmobile.targets.onnx import REDUCED_RANGE
    from dermmobile.targets.pt2e import build_quantizer, is_layer, layer_name
    from tests.test_bias_correction import _images, _model

    graph = torch.export.export(_model(), (torch.from_numpy(_images(2)),), strict=False).module()
    quantizer = build_quantizer("xnnpack", observer="minmax", weight_range=REDUCED_RANGE, layer_ranges={"3": (-127, 127)})
    quantizer.annotate(quantizer.transform_for_annotation(graph))
    grids = {layer_name(node): node.meta[Q_ANNOTATION_KEY].input_qspec_map[node.args[1]]
             for node in graph.graph.nodes if is_layer(node)}  # fmt: skip
    assert {name: (spec.quant_min, spec.quant_max) for name, spec in grids.items()} == {
        "0": REDUCED_RANGE, "3": (-127, 127), "8": REDUCED_RANGE}  # fmt: skip


@pytest.mark.parametrize("saturates", [True, False])
def test_onnx_int8_file_bias_correction_and_simulation_share_one_weight_grid(saturates, tiny_checkpoint, synthetic_root,
                                                                             tmp_path):  # fmt: skip
    """The grid the file's weights use is the one GPTQ rounded to (the default; bias correction shares its
    quantize_weight) and the simulation stands in with."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from dermmobile.exporter import export_artifact
    from dermmobile.targets.onnx import REDUCED_RANGE

    target = get_target("onnx")
    expected = REDUCED_RANGE if saturates else (-127, 127)
    with mock.patch("dermmobile.targets.onnx.int8_saturates", return_value=saturates):
        assert target.weight_range() == expected
        checkpoint = load_checkpoint(tiny_checkpoint)
        plan = plan_export(checkpoint, "onnx", "int8", tmp_path, calib_data=synthetic_root, calib_count=18)
        with mock.patch("dermmobile.quantization.gptq.quantize_weight", wraps=quantize_weight) as rounding:
            artifact = export_artifact(checkpoint, target, plan, frozenset())
        assert {call.args[1:] for call in rounding.call_args_list} == {expected}
        stop = mock.patch("dermmobile.quantization.simulate.build_quantizer", side_effect=RuntimeError("stop"))
        with stop as build, pytest.raises(RuntimeError, match="stop"):
            target.simulation(export_request(checkpoint, target, plan))(plan.tuning.arrays[:2], frozenset())
        assert build.call_args.kwargs["weight_range"] == expected
    assert artifact.manifest.notes["weight_bits"] == (7 if saturates else 8)
    model = onnx.load(str(artifact.path))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims]
    widest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.ndim > 1)
    assert widest == expected[1], widest


def _lite_block_model():
    """A stem and one EfficientNet-Lite block: a "SAME" pad before its depthwise convolution."""
    import torch
    from torch import nn

    from dermmobile.efficientnet_lite import MBConv, SameConv2d

    torch.manual_seed(0)
    return nn.Sequential(SameConv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU6(), MBConv(8, 8, 3, 1, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()  # fmt: skip


@pytest.mark.parametrize("target", ["tflite", "executorch", "onnx"])
@pytest.mark.parametrize(("arch", "float_layer"), [("lite_block", "3._depthwise_conv"), ("tiny_cnn", "6")])
def test_int8_leaves_float_a_padded_depthwise_or_the_layer_before_the_pool(target, arch, float_layer, tmp_path):
    """Two kinds of float layer that did not build: a depthwise convolution after its "SAME" pad, fed by an int8 layer
    (Lite0; XNNPACK refused it: "Weight and Input should both be quantized"), and the last convolution, whose ReLU
    output the average pool shares (tiny_cnn, as ResNets; prepare_pt2e raised a KeyError on both PT2E targets)."""
    from dermmobile.artifact import TensorSpec
    from dermmobile.models import build_model
    from dermmobile.targets.base import ExportRequest

    model = _lite_block_model() if arch == "lite_block" else build_model("tiny_cnn", 3).eval()
    logits_layer = "6" if arch == "lite_block" else "10"
    images = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    request = ExportRequest(model, arch, ["a", "b", "c"], {"resize": 36, "crop": 32}, quantize="int8",
                            calibration=images, out_file=tmp_path / f"model{get_target(target).extension}",
                            float_layers=frozenset({float_layer, logits_layer}))  # fmt: skip
    result = get_target(target).export(request)
    assert (result.op_counts.int8, result.op_counts.float) == (3 if arch == "lite_block" else 2, 2), result.op_counts
    manifest = SimpleNamespace(input=TensorSpec(**result.input), output=TensorSpec(**result.output))
    logits = get_target(target).load(request.out_file, manifest).predict(images)
    reference = TorchRuntime(model).predict(images)
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()
