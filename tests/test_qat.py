"""Quantization-aware training: it trains, its state survives the checkpoint, export converts exactly that state."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from dermmobile.checkpoint import (  # noqa: E402
    METADATA_KEY,
    CheckpointMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    weights_digest,
)
from dermmobile.cli import main  # noqa: E402
from dermmobile.data import load_images, scan_image_folder  # noqa: E402
from dermmobile.errors import BadInputError  # noqa: E402
from dermmobile.exporter import plan_export, run_plan  # noqa: E402
from dermmobile.qat import QAT_FORMAT, FakeQuantModel, training_split  # noqa: E402
from dermmobile.quantization.options import Int8Options  # noqa: E402

# The tiny fixture model was trained on un-augmented images: QAT keeps to what it saw
# (whole image, no flips, no jitter), so the test measures quantization, not a new task.
NO_AUGMENTATION = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": False, "vflip": False, "quarter_turns": False,
                   "rotation": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory, tiny_checkpoint) -> Path:
    source = load_checkpoint(tiny_checkpoint)
    meta = replace(source.meta, args={"augment": NO_AUGMENTATION, "balance": "none"})
    return save_checkpoint(tmp_path_factory.mktemp("float") / "tiny.safetensors", source.model, meta)


def _qat(checkpoint: Path, target: str, out: Path, *extra: str) -> Path:
    argv = ["qat", "--checkpoint", str(checkpoint), "--target", target, "--epochs", "2", "--lr", "1e-3",
            "--freeze-bn-after", "1", "--out", str(out)]  # fmt: skip
    assert main([*argv, *extra]) == 0
    return out / "qat.safetensors"


@pytest.fixture(scope="module", params=["executorch", "tflite"])
def qat_checkpoint(request, tmp_path_factory, float_checkpoint) -> Path:
    pytest.importorskip({"executorch": "executorch", "tflite": "litert_torch"}[request.param])
    return _qat(float_checkpoint, request.param, tmp_path_factory.mktemp(f"qat-{request.param}"))


@pytest.fixture(scope="module")
def qat_loaded(qat_checkpoint):
    """The QAT checkpoint as export sees it (rebuilding its graph costs seconds: once per module)."""
    return load_checkpoint(qat_checkpoint)


def _images(checkpoint) -> np.ndarray:
    folder = scan_image_folder(Path(checkpoint.meta.data["root"]))
    return load_images(folder.samples[::5], checkpoint.meta.spec, folder.root).arrays


def test_qat_checkpoint_rebuilds_its_fake_quant_model(qat_checkpoint, qat_loaded, float_checkpoint):
    meta = qat_loaded.meta
    assert meta.qat["format"] == QAT_FORMAT and meta.qat["quantization"] == "int8" and meta.qat["quantizer"]["is_qat"]
    assert meta.qat["source_checkpoint_sha256"] == load_checkpoint(float_checkpoint).file_sha256
    assert [e["bn_frozen"] for e in meta.metrics["epochs"]] == [False, True]
    assert meta.metrics["train_images"] == meta.qat["calibration"]["count"] > 0
    model = qat_loaded.model
    assert isinstance(model, FakeQuantModel)
    # The observers stay off in the rebuilt model: running images through it never moves a range.
    ranges = {k: v.clone() for k, v in model.prepared.state_dict().items() if not k.endswith("num_batches_tracked")}
    images = torch.from_numpy(_images(qat_loaded))
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(first, second)
    assert all(torch.equal(v, model.prepared.state_dict()[k]) for k, v in ranges.items())
    # The saved state is the trained one, XNNPACK's 2**-12 scale floor included (torchao resets it
    # when a state arrives without module versions, as safetensors stores it).
    from safetensors.torch import load_file

    saved = load_file(str(qat_checkpoint))
    assert all(torch.equal(saved[k], v) for k, v in ranges.items())
    # Fake quantization is on: the QAT model is not its float weights run in float.
    float_model = load_checkpoint(float_checkpoint).model
    with torch.no_grad():
        assert not torch.allclose(first, float_model(images), atol=1e-3)


def _weight_fake_quantized(model: FakeQuantModel, layer: str) -> bool:
    """Does the prepared graph fake-quantize the weight of `layer` (a module path)?"""
    from dermmobile.targets.pt2e import is_layer, layer_name

    (node,) = [n for n in model.prepared.graph.nodes if is_layer(n) and layer_name(n) == layer]
    return node.args[1].op == "call_module"  # a fake quantizer between the weight and the layer


def test_qat_trains_the_logits_layer_float_unless_asked(qat_loaded, float_checkpoint, tmp_path):
    assert not _weight_fake_quantized(qat_loaded.model, "10") and _weight_fake_quantized(qat_loaded.model, "0")
    if qat_loaded.meta.qat["target"] != "executorch":
        return  # one target is enough: both prepare through qat.prepare
    quantized = load_checkpoint(_qat(float_checkpoint, "executorch", tmp_path / "int8-logits", "--int8-logits",
                                     "--loss", "labels", "--epochs", "1"))  # fmt: skip
    assert quantized.meta.qat["float_layers"] == [] and _weight_fake_quantized(quantized.model, "10")
    assert quantized.meta.qat["schedule"]["loss"] == "labels" and qat_loaded.meta.qat["schedule"]["loss"] == "distill"
    plan = plan_export(quantized, "executorch", "int8", tmp_path / "export")
    (outcome,) = run_plan(quantized, plan)
    assert outcome.ok, outcome.error
    assert outcome.artifact.manifest.float_layers == [] and outcome.artifact.manifest.op_counts["float"] == 0


def test_distillation_fits_the_float_model_and_never_trains_it():
    from torch import nn

    from dermmobile.qat import Distilled, DistillLoss

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))
    student = nn.Sequential(nn.Linear(4, 3))
    student[0].load_state_dict(teacher[0].state_dict())
    forward = Distilled(student, teacher).train()
    loss = DistillLoss(forward)
    x, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    assert not teacher.training  # dropout off: the teacher's logits are the ones int8 must agree with
    assert loss(forward(x), labels).item() == pytest.approx(0, abs=1e-6)  # equal logits: nothing to fit, whatever the labels
    with torch.no_grad():
        student[0].bias += torch.tensor([1.0, 0.0, -1.0])
    value = loss(forward(x), labels)
    value.backward()
    assert value.item() > 0.05 and student[0].bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert "teacher" not in dict(loss.named_modules())


def test_qat_refuses_an_unknown_loss_before_any_work(tmp_path):
    from dermmobile.qat_config import QatConfig

    with pytest.raises(BadInputError, match="--loss must be one of distill, labels, got 'kl'"):
        QatConfig(tmp_path / "missing.safetensors", "tflite", tmp_path / "out", loss="kl").check()
    assert not (tmp_path / "out").exists()


def test_qat_refuses_float_layers_that_are_not_layer_names(qat_checkpoint, qat_loaded, tmp_path):
    from safetensors.torch import load_file, save_file

    meta = replace(qat_loaded.meta, qat={**qat_loaded.meta.qat, "float_layers": "10"})
    bad = tmp_path / "bad.safetensors"
    state = load_file(str(qat_checkpoint))
    save_file(state, str(bad), metadata={METADATA_KEY: json.dumps(asdict(replace(meta, weights_sha256=weights_digest(state))))})
    with pytest.raises(BadInputError, match="float_layers is not a list of layer names"):
        load_checkpoint(bad)


def test_qat_is_deterministic_from_its_seed(float_checkpoint, qat_checkpoint, tmp_path):
    meta = read_meta(qat_checkpoint)
    if meta.qat["target"] != "executorch":
        pytest.skip("one target is enough: both run the same training loop")
    again = _qat(float_checkpoint, meta.qat["target"], tmp_path / "again")
    assert read_meta(again).weights_sha256 == meta.weights_sha256


def _input_observer(model: FakeQuantModel):
    """The fake quantizer on the graph's image input."""
    (image,) = [n for n in model.prepared.graph.nodes if n.op == "placeholder"]
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    modules = [getattr(model.prepared, n.target) for n in image.users if n.op == "call_module"]
    (observer,) = [m for m in modules if isinstance(m, FakeQuantizeBase)]
    return observer


def test_export_converts_the_trained_graph(qat_loaded, tmp_path, monkeypatch, capsys):
    """The QAT graph converted as it is: no calibration, no bias correction, no fallback search (qat.export_options)."""
    import dermmobile.quantization.bias_correction as bias_correction
    import dermmobile.quantization.export as int8_export

    def must_not_run(*args, **kwargs):
        raise AssertionError("a QAT checkpoint's int8 must be its trained graph, not corrected or searched")

    monkeypatch.setattr(bias_correction, "correct_biases", must_not_run)
    monkeypatch.setattr(int8_export, "export_int8", must_not_run)
    checkpoint = qat_loaded
    target = checkpoint.meta.qat["target"]
    plan = plan_export(checkpoint, target, "int8", tmp_path)  # the default Int8Options: both on for float checkpoints
    assert plan.calibration is None and plan.tuning is None and plan.check is not None
    (outcome,) = run_plan(checkpoint, plan)
    assert outcome.ok, outcome.error
    manifest = outcome.artifact.manifest
    # Parity is judged against the fake-quant model, on images QAT never trained on.
    assert manifest.status == "passed" and manifest.parity["agreement"] >= 0.99
    assert manifest.calibration["method"] == "quantization-aware training"
    assert manifest.qat["source_checkpoint_sha256"] == checkpoint.meta.qat["source_checkpoint_sha256"]
    assert manifest.qat["bias_correction"] is False and manifest.qat["fallback"] is False
    # The logits layer trained in float and stays float; everything else is the trained int8.
    assert manifest.float_layers == checkpoint.meta.qat["float_layers"] == ["10"]
    assert 0 < manifest.float_macs_share == checkpoint.meta.qat["float_macs_share"] < 0.1
    capsys.readouterr()
    assert main(["inspect", str(outcome.artifact.path)]) == 0
    assert "layers left in float (as quantization-aware training left them): 1 (" in capsys.readouterr().out
    assert manifest.op_counts["int8"] > 0 and manifest.op_counts["float"] == 1
    assert manifest.gate_images["count"] == manifest.parity["images"] == len(plan.check.names)
    if target == "tflite":
        # The file quantizes its float32 input with the scale QAT learned, not a new calibration.
        assert manifest.input.dtype == "float32"
        learned = float(_input_observer(checkpoint.model).scale)
        assert _tflite_input_scale(outcome.artifact.path) == pytest.approx(learned, rel=1e-6)


def _tflite_input_scale(path: Path) -> float:
    """The scale of the QUANTIZE op that reads a TFLite file's float input."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    image = interpreter.get_input_details()[0]["index"]
    (op,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "QUANTIZE" and image in op["inputs"]]
    (scale,) = interpreter.get_tensor_details()[op["outputs"][0]]["quantization_parameters"]["scales"]
    return float(scale)


def test_conversion_follows_the_saved_ranges(qat_checkpoint, qat_loaded, tmp_path):
    """Edit one learned range in the checkpoint: the converted int8 graph follows it (nothing is re-observed).

    (The TFLite artifact's input scale equals the converted graph's: test_export_converts_the_trained_graph.)
    """
    from safetensors.torch import load_file, save_file

    from dermmobile.targets.pt2e import converted_qat

    prepared = qat_loaded.model.prepared
    observer = _input_observer(qat_loaded.model)
    # The learned range is the observer's min/max (convert derives the scale from it); doubling
    # both doubles the scale. One observer may serve several ops; each of its names is stored.
    names = [name for name, module in prepared.named_modules(remove_duplicate=False) if module is observer]
    keys = [f"{name}.activation_post_process.{end}" for name in names for end in ("min_val", "max_val")]
    state = load_file(str(qat_checkpoint))
    state |= {key: state[key] * 2 for key in keys}
    edited = tmp_path / "edited.safetensors"
    save_file(
        state,
        str(edited),
        metadata={METADATA_KEY: json.dumps(asdict(replace(qat_loaded.meta, weights_sha256=weights_digest(state))))},
    )

    def input_scale(model) -> float:
        graph = converted_qat(model, fold_quantize=True).graph
        (image,) = [n for n in graph.nodes if n.op == "placeholder"]
        (quantize,) = [n for n in image.users if "quantize_per_tensor" in str(n.target)]
        return float(quantize.args[1])

    assert input_scale(qat_loaded.model) == pytest.approx(float(observer.scale), rel=1e-6)
    assert input_scale(load_checkpoint(edited).model) == pytest.approx(2 * float(observer.scale), rel=1e-6)


def test_qat_checkpoint_exports_only_what_it_was_trained_for(qat_loaded, synthetic_root, tmp_path):
    checkpoint = qat_loaded
    trained = checkpoint.meta.qat["target"]
    other = {"tflite": "executorch", "executorch": "tflite"}[trained]
    for target, quantize in [(other, "int8"), (trained, "none"), ("onnx", "int8"), ("all", "int8")]:
        with pytest.raises(BadInputError, match=f"trained for {trained} int8.*--target {trained} --quantize int8"):
            plan_export(checkpoint, target, quantize, tmp_path)
    with pytest.raises(BadInputError, match="--calib-data would not be used"):
        plan_export(checkpoint, trained, "int8", tmp_path, calib_data=synthetic_root)
    with pytest.raises(BadInputError, match="--observer and --explain would not be used"):
        plan_export(checkpoint, trained, "int8", tmp_path, int8=Int8Options(observer="minmax", explain=True))
    assert not any(tmp_path.iterdir())


def test_qat_refuses_what_it_cannot_train(qat_checkpoint, float_checkpoint, tmp_path, capsys):
    assert main(["qat", "--checkpoint", str(float_checkpoint), "--target", "onnx", "--out", str(tmp_path)]) == 2
    assert "targets whose int8 is PT2E: tflite, executorch" in capsys.readouterr().err
    assert main(["qat", "--checkpoint", str(qat_checkpoint), "--target", "tflite", "--out", str(tmp_path)]) == 2
    assert "already a QAT checkpoint" in capsys.readouterr().err


def test_training_split_leaves_out_recorded_test_and_validation_files(synthetic_root, tmp_path):
    folder = scan_image_folder(synthetic_root)
    names = [s.path.relative_to(folder.root).as_posix() for s in folder.samples]
    record = {"root": str(folder.root), "test_files": names[:7], "val_files": names[7:10]}
    train, val = training_split(folder, CheckpointMeta("tiny_cnn", folder.classes, {}, data=record))
    assert val == list(range(7, 10)) and train == list(range(10, len(names)))
    # Without a record of test files, the default split (export and bench then call every image seen).
    from dermmobile.data import stratified_split

    train, val = training_split(folder, CheckpointMeta("tiny_cnn", folder.classes, {}, data={"root": str(folder.root)}))
    assert (train, val) == (stratified_split(folder.samples).train, stratified_split(folder.samples).val)
    # Another folder's images would all count as unseen later: refused.
    with pytest.raises(BadInputError, match="not the folder the checkpoint was trained on"):
        training_split(folder, CheckpointMeta("tiny_cnn", folder.classes, {}, data={"root": str(tmp_path)}))


class _EpsNet(torch.nn.Module):
    """Two conv + batch norm layers whose eps is not torchao's pattern's 1e-5, with running variances near it."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8, eps=1e-3)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8, eps=1e-2)
        self.drop, self.fc = torch.nn.Dropout(0.2), torch.nn.Linear(8, 4)
        generator = torch.Generator().manual_seed(0)
        for bn in (self.bn1, self.bn2):
            bn.running_var.copy_(torch.rand(8, generator=generator) * 3e-3 + 1e-4)
            bn.running_mean.copy_(torch.randn(8, generator=generator) * 0.01)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.mul_(0.05)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.drop(x.mean((2, 3))))


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_qat_graph_and_its_conversion_keep_the_models_batch_norm_eps(target):
    """torchao's QAT conv + batch-norm pattern, its train/eval switches and convert's fold all write eps 1e-5; the
    QAT graph must compute the model it was made from (fake quantization off) and convert must fold what it trained."""
    pytest.importorskip({"executorch": "executorch", "tflite": "litert_torch"}[target])
    from torchao.quantization.pt2e import disable_fake_quant, enable_fake_quant

    from dermmobile.qat import prepare, set_mode
    from dermmobile.targets.pt2e import converted_qat

    torch.manual_seed(0)
    model = _EpsNet().eval()
    images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        float_logits = model(images)
    fake_quant = FakeQuantModel(prepare(copy.deepcopy(model), target, 16), observing=True)
    fake_quant.train(True)  # a training step's form and back: the switches must keep eps and dropout's p
    fake_quant.train(False)
    graph = fake_quant.prepared.graph
    norms = [n for n in graph.nodes if n.target == torch.ops.aten.batch_norm.default]
    assert sorted(n.args[7] for n in norms) == [1e-3, 1e-2]
    assert [n.args[1] for n in graph.nodes if n.target == torch.ops.aten.dropout.default] == [0.2]
    with torch.no_grad():
        fake_quant.prepared.apply(disable_fake_quant)
        assert torch.allclose(fake_quant(images), float_logits, atol=1e-5)
        fake_quant.prepared.apply(enable_fake_quant)
        set_mode(fake_quant.prepared, training=True, observing=True)  # observe the images, as a QAT epoch would
        fake_quant(images)
        fake_quant.train(False)
        simulated = fake_quant(images)
        converted = converted_qat(fake_quant, fold_quantize=True)(images)
    # The int8 graph computes what QAT trained (rounding ties apart); folded with eps 1e-5 it sat 40 times the int8
    # error itself away from it.
    assert (converted - simulated).abs().mean() < 0.01 * (simulated - float_logits).abs().mean() + 1e-4


class _BiasNet(torch.nn.Module):
    """One 1x1 conv + batch norm whose output range is a few times its int32 bias step.

    The input is one grey channel in three: weights (1, -1, m/127) cancel to m/127 x grey, so the
    per-channel weight scale is 1/127 while the output spans a few hundredths; the folded biases
    (batch norm's shift) sit anywhere on the int32 grid, and rounding them moves outputs by up to
    a fifth of an output step.
    """

    def __init__(self, channels: int = 16):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, channels, 1, bias=False), torch.nn.BatchNorm2d(channels, eps=1e-3)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            small = torch.randint(1, 6, (channels,), generator=generator).float() / 127
            self.conv.weight.copy_(torch.stack([torch.ones(channels), -torch.ones(channels), small], 1)[..., None, None])
            self.bn.running_var.fill_(1 - 1e-3)
            self.bn.running_mean.copy_(torch.rand(channels, generator=generator) * 0.02)
            self.bn.bias.copy_(torch.rand(channels, generator=generator) * 0.02)

    def forward(self, x):
        return self.bn(self.conv(x)).flatten(1)


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_fake_quant_model_stores_its_bias_as_the_runtime_does(target, tmp_path):
    """The runtimes keep each int8 layer's folded bias as int32 on the grid input scale x weight scale: the
    fake-quantize model must add that rounding, or its outputs part from the file's on every image."""
    pytest.importorskip({"executorch": "executorch", "tflite": "litert_torch"}[target])
    from dermmobile.qat import prepare, set_mode
    from dermmobile.quantization import integer_forward
    from dermmobile.targets import get_target
    from dermmobile.targets.base import ExportRequest

    model = _BiasNet().eval()
    grey = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    images = grey.expand(-1, 3, -1, -1).contiguous()
    fake_quant = FakeQuantModel(prepare(copy.deepcopy(model), target, 16))
    set_mode(fake_quant.prepared, training=True, observing=True)  # observe the images, as a QAT epoch would
    with torch.no_grad():
        fake_quant(images)
    fake_quant.train(False)
    plain = FakeQuantModel(copy.deepcopy(fake_quant.prepared))
    assert integer_forward.strip(plain.prepared) == 1
    out_file = tmp_path / f"bias.{'pte' if target == 'executorch' else 'tflite'}"
    request = ExportRequest(fake_quant, "bias_net", [str(i) for i in range(16 * 16 * 16)], {"crop": 16}, "int8",
                            out_file=out_file, qat={"target": target})  # fmt: skip
    result = get_target(target).export(request)
    io = {name: SimpleNamespace(**{"layout": "NCHW", "scale": None, "zero_point": None} | getattr(result, name))
          for name in ("input", "output")}  # what the manifest would say  # fmt: skip
    runtime = get_target(target).load(out_file, SimpleNamespace(**io), threads=1)
    file_out = torch.from_numpy(runtime.predict(images.numpy()))
    with torch.no_grad():
        emulated, without = fake_quant(images), plain(images)
    step = (emulated.max() - emulated.min()) / 255  # the output's int8 step (nearly: the range is observed)
    parted = lambda outputs: int(((outputs - file_out).abs() > step / 2).sum())  # noqa: E731
    # Measured on both targets: 0 of 32768 outputs part from the file's by half a step or more, 1,123 without.
    assert parted(emulated) <= 10 and parted(without) >= 200


def test_integer_forward_keeps_fake_quants_gradient_and_steps_aside_where_the_runtime_would_not_apply():
    """The runtime's value, fake quantization's gradient (straight-through); nothing while fake quantization is off
    or while batch norm normalises with batch statistics (the runtime folds running ones)."""
    pytest.importorskip("executorch")
    from torchao.quantization.pt2e import disable_fake_quant

    from dermmobile.qat import prepare, set_mode
    from dermmobile.quantization import integer_forward

    grey = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    images = grey.expand(-1, 3, -1, -1).contiguous()
    emulated = FakeQuantModel(prepare(_BiasNet().eval(), "executorch", 16))
    set_mode(emulated.prepared, training=True, observing=True)
    with torch.no_grad():
        emulated(images)
    emulated.train(False)
    plain = FakeQuantModel(copy.deepcopy(emulated.prepared))
    assert integer_forward.strip(plain.prepared) == 1

    def output_and_gradient(model):
        model.zero_grad()
        out = model(images)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        return out.detach(), model.prepared.get_parameter("conv.weight").grad.clone()

    (value, gradient), (plain_value, plain_gradient) = output_and_gradient(emulated), output_and_gradient(plain)
    assert not torch.equal(value, plain_value)  # the int32 bias moves outputs (test above)
    assert torch.equal(gradient, plain_gradient)
    unfrozen = FakeQuantModel(emulated.prepared, bn_frozen=False).train(True)
    with torch.no_grad():
        assert torch.equal(unfrozen(images), FakeQuantModel(plain.prepared, bn_frozen=False).train(True)(images))
        for model in (emulated, plain):
            model.train(False)
            model.prepared.apply(disable_fake_quant)
        assert torch.equal(emulated(images), plain(images))


class _MiniLite(torch.nn.Module):
    """EfficientNet-Lite's int8 ops in small: padded stride-2 stem, expand / 5x5 depthwise / project, a residual add."""

    def __init__(self, width: int = 16):
        super().__init__()

        def layer(c_in, c_out, kernel, groups=1, stride=1, relu6=True, bias=False):
            norm = torch.nn.BatchNorm2d(c_out, eps=1e-3)
            activation = [torch.nn.ReLU6()] if relu6 else []
            conv = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, groups=groups, bias=bias)
            return torch.nn.Sequential(conv, norm, *activation)

        w = width
        self.stem = layer(3, w, 3, stride=2, bias=True)  # a conv bias as well as batch norm's: both fold
        block = lambda c_in, wide, kernel, stride: torch.nn.ModuleList(  # noqa: E731 (expand, depthwise, project)
            [layer(c_in, wide, 1), layer(wide, wide, kernel, wide, stride), layer(wide, 2 * w, 1, relu6=False)]
        )
        self.block1, self.block2 = block(w, 4 * w, 5, 2), block(2 * w, 8 * w, 3, 1)
        self.head = layer(2 * w, 64, 1)
        generator = torch.Generator().manual_seed(0)
        for module in self.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # statistics of a trained net, not identity
                with torch.no_grad():
                    module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.3)

    def forward(self, x):
        pad = torch.nn.functional.pad
        x = self.stem(pad(x, [0, 1, 0, 1]))
        expand, depthwise, project = self.block1
        x = project(depthwise(pad(expand(x), [1, 2, 1, 2])))
        expand, depthwise, project = self.block2
        x = x + project(depthwise(pad(expand(x), [1, 1, 1, 1])))
        return self.head(x).flatten(1)


@pytest.mark.parametrize("target", ["executorch", "tflite"])
def test_integer_arithmetic_computes_what_the_file_computes(target, tmp_path):
    """quantization/integer_reference.py runs the converted graph with the runtime's integer arithmetic, and
    quantization/integer_forward.py puts the same rules in the fake-quantize model: the int8 outputs of both are the
    file's, where torch's own run of the graph, and the fake-quantize model without them, part from it in thousands."""
    pytest.importorskip({"executorch": "executorch", "tflite": "litert_torch"}[target])
    from dermmobile.qat import prepare, set_mode
    from dermmobile.quantization import integer_forward, integer_reference
    from dermmobile.targets import get_target
    from dermmobile.targets.base import ExportRequest
    from dermmobile.targets.pt2e import converted_qat

    images = (torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) - 0.45) * 4.5
    fake_quant = FakeQuantModel(prepare(_MiniLite().eval(), target, 32))
    set_mode(fake_quant.prepared, training=True, observing=True)
    with torch.no_grad():
        fake_quant(images)
    fake_quant.train(False)
    out_file = tmp_path / f"mini.{'pte' if target == 'executorch' else 'tflite'}"
    outputs = 64 * 8 * 8  # the head's 64 channels at 8 x 8
    request = ExportRequest(fake_quant, "mini_lite", [str(i) for i in range(outputs)], {"crop": 32}, "int8",
                            out_file=out_file, qat={"target": target})  # fmt: skip
    result = get_target(target).export(request)
    io = {name: SimpleNamespace(**{"layout": "NCHW", "scale": None, "zero_point": None} | getattr(result, name))
          for name in ("input", "output")}  # fmt: skip
    file_out = get_target(target).load(out_file, SimpleNamespace(**io), threads=1).predict(images.numpy())
    graph = converted_qat(fake_quant, fold_quantize=False)
    reference = integer_reference.run(graph, images.numpy(), target)
    plain = FakeQuantModel(copy.deepcopy(fake_quant.prepared))
    # 8 layers and the residual add; on LiteRT also the two pads that requantize to their own parameters
    assert integer_forward.strip(plain.prepared) == (9 if target == "executorch" else 11)
    with torch.no_grad():
        torch_run, emulated, without = graph(images).numpy(), fake_quant(images).numpy(), plain(images).numpy()
    parted = {name: int((np.abs(outputs - file_out) > 1e-4).sum())
              for name, outputs in [("reference", reference), ("emulated", emulated), ("torch", torch_run),
                                    ("without", without)]}  # fmt: skip
    # Measured (64 x 4,096 values, runs per target): the reference and the fake-quantize model part in 0 on both
    # targets; torch's run and the fake-quantize model without the rules in 4,000-33,000 (the observed ranges vary
    # with thread timing). Before ExecuTorch's bias rule (times 1 / scale, in float32), a stem bias at exactly x.5
    # steps made 2-6 part there; before LiteRT's float64 rule, 9-34.
    assert parted["reference"] <= 5 and parted["emulated"] <= 5, parted
    assert parted["torch"] >= 1000 and parted["without"] >= 1000, parted
