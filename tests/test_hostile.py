"""Hostile inputs, one class of issue 15 per section: every case exits 2 with a message naming the
problem, no traceback, no hang, and nothing written outside the output folder.

Most cases run `dermmobile.cli.main` in this process (fast); the special-file cases and a
sample of the others run the installed CLI in a subprocess with a time limit, so a hang
or a traceback is caught as it would be by a user.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dermmobile.artifact import Manifest, TensorSpec, load_artifact, manifest_path, write_manifest
from dermmobile.cli import main
from dermmobile.errors import EXIT_BAD_INPUT, BadInputError, UnsafeFileError

LABELS = ["acne", "crust", "wheal"]
SPEC = {"resize": 36, "crop": 32}
POSIX = pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets and /dev/zero are POSIX")


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """The installed CLI in a subprocess: what a user sees, with a time limit that turns a hang into a failure."""
    return subprocess.run([sys.executable, "-m", "dermmobile", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_refused(result: subprocess.CompletedProcess, *needles: str, code: int = EXIT_BAD_INPUT) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def refused_in_process(capsys, args: list[str], *needles: str) -> str:
    assert main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def fake_artifact(folder: Path, name: str = "m.onnx", labels=LABELS, payload: bytes = b"not a model", fmt: str = "onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(payload)
    manifest = Manifest(
        format=fmt,
        quantization="none",
        file=name,
        arch="tiny_cnn",
        labels=list(labels),
        input=TensorSpec("image", [1, 3, 32, 32], "float32", "NCHW"),
        output=TensorSpec("logits", [1, len(labels)], "float32"),
        preprocess=dict(SPEC),
    )
    write_manifest(path, manifest)
    return path


def rewrite(path: Path, text: str) -> None:
    manifest_path(path).write_text(text)


# -- 1. manifest and checkpoint metadata are checked for meaning -------------------------------------------------
def _set(data: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


MANIFEST_MEANING = [
    ("labels", ["a", "b", "c", "d"], "output shape"),  # label count differs from the model's output size
    ("labels", ["acne", "acne", "wheal"], "distinct"),
    ("labels", [1, 2, 3], "labels.0"),
    ("labels", ["", "b", "c"], "labels.0"),
    ("labels", ["x" * 1000, "b", "c"], "labels.0"),
    ("labels", ["a"], "labels"),
    ("labels", "abc", "labels"),
    ("preprocess.mean", "0.5", "mean"),
    ("preprocess.mean", [0.5, 0.5], "mean"),
    ("preprocess.std", [0.2, 0.0, 0.2], "std"),
    ("preprocess.crop", 0, "crop"),
    ("preprocess.crop", -224, "crop"),
    ("preprocess.crop", 10**6, "crop"),
    ("preprocess.resize", 10**6, "resize"),
    ("preprocess.resize", True, "resize"),
    ("preprocess.crop", 64, "crop"),  # larger than resize 36
    ("preprocess.scale", -1.0, "scale"),
    ("preprocess.algorithm", "dermmobile-preprocess-v99", "algorithm"),
    ("preprocess.colour", "RGB", "colour"),
    ("input.shape", [1, 3, 224, 224], "input shape"),
    ("input.shape", [1, 3, 0, 32], "input.shape"),
    ("input.shape", [1, "3", 32, 32], "input.shape"),
    ("input.layout", "NWHC", "input.layout"),
    ("input.dtype", "float64", "input.dtype"),
    ("input.scale", -0.5, "input.scale"),
    ("output.shape", [1, 3, 1], "output shape"),
    ("output.zero_point", 1000, "zero_point"),
    ("quantization", "int4", "quantization"),
    ("status", "great", "status"),
    ("format", "evil", "unknown target"),
    ("format", "../../x", "format"),
    ("arch", "tiny_cnn\x1b[31m", "arch"),
    ("bytes", -1, "bytes"),
    ("bytes", "11", "bytes"),
    ("sha256", "zz", "sha256"),
    ("file", "../m.onnx", "not a plain name"),
    ("file", "m\x00.onnx", "not a plain name"),
    ("export_seconds", "fast", "export_seconds"),
    ("surprise", 1, "surprise"),
    ("schema_version", True, "version"),
    ("parity", [], "parity"),
]


@pytest.mark.parametrize("field, value, needle", MANIFEST_MEANING, ids=[f"{f}={v!r}"[:40] for f, v, _ in MANIFEST_MEANING])
def test_manifest_fields_are_checked_for_meaning(tmp_path, capsys, field, value, needle):
    path = fake_artifact(tmp_path)
    data = _set(json.loads(manifest_path(path).read_text()), field, value)
    rewrite(path, json.dumps(data))
    refused_in_process(capsys, ["inspect", str(path)], needle)


@pytest.mark.parametrize(
    "replace, needle",
    [
        ('"crop": 32', '"crop": 1e400'),
        ('"crop": 32', '"crop": NaN'),
        ('"crop": 32', '"crop": Infinity'),
        ('"crop": 32', '"crop": 9' + "9" * 5000),
        ('"arch": "tiny_cnn"', '"arch": "tiny_cnn", "arch": "tiny_cnn"'),
    ],
    ids=["1e400", "NaN", "Infinity", "5000-digit", "duplicate-key"],
)
def test_numbers_json_cannot_mean_are_refused(tmp_path, capsys, replace, needle):
    path = fake_artifact(tmp_path)
    text = manifest_path(path).read_text()
    assert replace in text
    rewrite(path, text.replace(replace, needle))
    refused_in_process(capsys, ["inspect", str(path)], str(path))


def _rewrite_checkpoint_metadata(path: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from dermmobile.checkpoint import METADATA_KEY

    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        raw = json.loads(handle.metadata()[METADATA_KEY])
    text = change(raw)
    save_file(state, str(path), metadata={METADATA_KEY: text if isinstance(text, str) else json.dumps(raw)})


CHECKPOINT_MEANING = [
    (lambda m: m.update(labels=[1, 2, 3]), "labels.0"),
    (lambda m: m.update(labels=["a"] * len(m["labels"])), "distinct"),
    (lambda m: m.update(labels=["only"]), "labels"),
    (lambda m: m["preprocess"].update(mean="0.5"), "mean"),
    (lambda m: m["preprocess"].update(crop=10**6), "crop"),
    (lambda m: m["preprocess"].update(std=[1, 1, 0]), "std"),
    (lambda m: m.update(arch="../../etc"), "arch"),
    (lambda m: m.update(data={"test_files": 7}), "test_files"),
    (lambda m: m.update(data={"val_files": 7}), "val_files"),
    (lambda m: m.update(data={"root": ["x"]}), "root"),
    (lambda m: m.update(weights_sha256=5), "weights_sha256"),
    (lambda m: m.update(format_version=True), "version"),
    (lambda m: m.update(extra_field=1), "extra_field"),
    (lambda m: json.dumps(m).replace('"format_version": 1', '"format_version": 1, "x": 1e400'), "overflows"),
    (lambda m: "[" * 100_000 + "]" * 100_000, "nested"),
    (lambda m: "{not json", "not valid JSON"),
]


@pytest.mark.parametrize("change, needle", CHECKPOINT_MEANING, ids=[n for _, n in CHECKPOINT_MEANING])
def test_checkpoint_metadata_is_checked_for_meaning(tiny_checkpoint, tmp_path, capsys, change, needle):
    import shutil

    path = tmp_path / "c.safetensors"
    shutil.copy(tiny_checkpoint, path)
    _rewrite_checkpoint_metadata(path, change)
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    refused_in_process(capsys, ["predict", str(image), "--model", str(path)], needle)


def test_manifest_labels_must_match_the_artifact_s_real_output(tmp_path, capsys, onnx_artifact):
    """A manifest whose shapes agree with its labels but not with the file: refused after loading the runtime."""
    import shutil

    folder = tmp_path / "export"
    folder.mkdir()
    copy = folder / onnx_artifact.name
    shutil.copy(onnx_artifact, copy)
    data = json.loads(manifest_path(onnx_artifact).read_text())
    labels = [*data["labels"], "extra"]
    data.update(labels=labels, parity=None)
    data["output"]["shape"] = [1, len(labels)]
    manifest_path(copy).write_text(json.dumps(data))
    refused_in_process(capsys, ["inspect", str(copy)], f"lists {len(labels)} labels but the artifact gives {len(labels) - 1}")


# -- 2. parsers with limits -------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [33, 100_000])
def test_deeply_nested_manifest_is_refused(tmp_path, capsys, depth):
    path = fake_artifact(tmp_path)
    rewrite(path, '{"notes": ' + "[" * depth + "]" * depth + "}")
    refused_in_process(capsys, ["inspect", str(path)], "nested")


def test_deeply_nested_and_huge_merge_files_are_refused_in_seconds(tmp_path, capsys):
    out = tmp_path / "report"
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    refused_in_process(capsys, ["bench", "--merge", str(deep), "--out", str(out)], "nested")
    row = {"source": "android", "device": "P", "artifact": "a.tflite", "format": "tflite", "quantization": "none",
           "threads": 1, "latency_ms": {"p50": 1, "p90": 1, "p99": 1, "mean": 1, "std": 0}, "iterations": 1}  # fmt: skip
    huge = tmp_path / "huge.json"
    huge.write_text("[" + ",".join([json.dumps(row)] * 1_000_000) + "]")
    many = tmp_path / "many.json"
    many.write_text("[" + ",".join([json.dumps(row)] * 20_000) + "]")
    for file, needle in ((huge, "limit"), (many, "at most")):
        started = time.monotonic()
        refused_in_process(capsys, ["bench", "--merge", str(file), "--out", str(out)], needle)
        assert time.monotonic() - started < 20


def bench_report(artifacts: list) -> dict:
    """The smallest bench.json that `bench --merge` renders again."""
    return {
        "schema": "dermmobile-bench", "schema_version": 1, "created": "now", "versions": {}, "gemm_peak_gflops": {},
        "machine": {"cpu": "x", "cores": 1, "os": "y", "python": "3"}, "settings": {"warmup": 1, "iters": 1, "threads": [1]},
        "data": {"root": "d", "split": "all", "classes": LABELS}, "reference": {"name": "r", "note": "n"},
        "artifacts": artifacts, "rows": [], "problems": [],
    }  # fmt: skip


def test_a_bench_report_cannot_name_a_file_outside_its_folder(tmp_path, capsys):
    from tests.test_bench import PHONE_ROW

    out = tmp_path / "report"
    out.mkdir()
    entry = {"name": "../../evil", "role": "artifact", "format": "onnx", "quantization": "none", "status": "passed"}
    (out / "bench.json").write_text(json.dumps(bench_report([entry])))
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([PHONE_ROW]))
    refused_in_process(capsys, ["bench", "--merge", str(rows), "--out", str(out)], "not a plain file name")


# -- 3. special files -------------------------------------------------------------------------------------------
@pytest.fixture
def specials(tmp_path):
    """A FIFO, a symlink to /dev/zero, a socket and a folder, each with a given name."""
    made = []

    def make(kind: str, name: str) -> Path:
        path = tmp_path / name
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "zero":
            os.symlink("/dev/zero", path)
        elif kind == "socket":  # bound by a relative name: socket paths are limited to ~100 bytes
            server = socket.socket(socket.AF_UNIX)
            cwd = os.getcwd()
            os.chdir(path.parent)
            try:
                server.bind(path.name)
            finally:
                os.chdir(cwd)
            made.append(server)
        elif kind == "folder":
            path.mkdir()
        return path

    yield make
    for server in made:
        server.close()


KINDS = {"fifo": "FIFO", "zero": "character device", "socket": "socket", "folder": "folder"}


@POSIX
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_special_files_as_manifest_and_artifact(tmp_path, specials, kind):
    manifest = specials(kind, "m.onnx.json")
    assert_refused(cli("inspect", manifest, timeout=60), KINDS[kind])
    artifact = fake_artifact(tmp_path / "export")
    data = json.loads(manifest_path(artifact).read_text())
    artifact.unlink()
    special = specials(kind, "export/" + artifact.name)
    assert special == artifact
    manifest_path(artifact).write_text(json.dumps(data))
    assert_refused(cli("inspect", artifact, timeout=60), KINDS[kind])
    assert_refused(cli("bench", "--artifacts", tmp_path / "export", "--data", tmp_path, "--out", tmp_path / "r", timeout=60))


@POSIX
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_special_files_as_image_checkpoint_and_merge_file(tmp_path, specials, tiny_checkpoint, kind):
    image = specials(kind, "photo.jpg")
    result = cli("predict", image, "--model", tiny_checkpoint, timeout=120)
    assert result.returncode == EXIT_BAD_INPUT and "Traceback" not in result.stderr
    assert KINDS[kind] in result.stdout, result.stdout
    checkpoint = specials(kind, "model.safetensors")
    assert_refused(cli("predict", image, "--model", checkpoint, timeout=60), KINDS[kind])
    assert_refused(cli("export", "--checkpoint", checkpoint, "--out", tmp_path / "e", timeout=60), KINDS[kind])
    merge = specials(kind, "rows.json")
    assert_refused(cli("bench", "--merge", merge, "--out", tmp_path / "r", timeout=60), KINDS[kind])


@POSIX
def test_a_data_folder_holding_a_fifo_is_read_without_hanging(tmp_path, tiny_checkpoint, synthetic_root):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    os.mkfifo(data / "acne" / "waiting.png")
    result = cli("evaluate", "--checkpoint", tiny_checkpoint, "--data", data, "--split", "all", timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    from dermmobile.data import scan_image_folder

    assert ("waiting.png", "not a regular file") in [(p.name, r) for p, r in scan_image_folder(data).skipped]


@POSIX
def test_onnx_external_data_that_is_not_a_regular_file(tmp_path, specials, capsys):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["m"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["m", "w"], ["logits"])],
        "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], [weight],
    )  # fmt: skip
    folder = tmp_path / "export"
    folder.mkdir()
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = fake_artifact(folder, payload=model.SerializeToString())
    specials("fifo", "export/weights.bin")
    refused_in_process(capsys, ["inspect", str(path)], "damaged or not supported", "FIFO")


# -- 4. damaged artifacts, with a manifest rewritten to match --------------------------------------------------
REAL_FORMATS = {"torchscript": "torch", "onnx": "onnxruntime", "tflite": "ai_edge_litert", "executorch": "executorch"}


@pytest.fixture(scope="module")
def real_artifacts(tiny_checkpoint, tmp_path_factory):
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.exporter import plan_export, run_plan

    checkpoint = load_checkpoint(tiny_checkpoint)
    out = tmp_path_factory.mktemp("real-export")
    found = {}
    for target, module in REAL_FORMATS.items():
        try:
            __import__(module)
        except ImportError:
            continue
        (outcome,) = run_plan(checkpoint, plan_export(checkpoint, target, "none", out))
        assert outcome.ok, outcome.error
        found[target] = outcome.artifact.path
    return found


@pytest.fixture
def onnx_artifact(real_artifacts):
    if "onnx" not in real_artifacts:
        pytest.skip("onnxruntime not installed")
    return real_artifacts["onnx"]


def _damage(source: Path, folder: Path, how: str) -> Path:
    """A damaged copy whose manifest was rewritten to match it (the sha256 check alone would pass it)."""
    from dermmobile.fsutil import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    data = bytearray(source.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "header":
        data = data[:16]
    elif how == "flipped":
        for position in range(8, min(len(data), 4096), 97):  # the tables near the start, not just weights
            data[position] ^= 0xFF
    target = folder / source.name
    target.write_bytes(bytes(data))
    manifest = json.loads(manifest_path(source).read_text())
    manifest.update(sha256=sha256_file(target), bytes=len(data), parity=None)
    manifest_path(target).write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("target", sorted(REAL_FORMATS))
@pytest.mark.parametrize("how", ["truncated", "header", "flipped"])
def test_damaged_artifacts_are_refused_in_every_command(
    tmp_path, capsys, real_artifacts, tiny_checkpoint, synthetic_root, target, how
):
    if target not in real_artifacts:
        pytest.skip(f"{target} runtime not installed")
    damaged = _damage(real_artifacts[target], tmp_path / "export", how)
    image = next(synthetic_root.glob("*/*.png"))
    message = "the artifact is damaged or not supported by this runtime"
    refused_in_process(capsys, ["inspect", str(damaged)], message)
    refused_in_process(capsys, ["predict", str(image), "--model", str(damaged)], message)
    args = ["bench", "--artifacts", str(damaged.parent), "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_root)]
    settings = ["--in-process", "--no-compile", "--iters", "1", "--warmup", "0", "--e2e-images", "0", "--gemm-size", "16"]
    refused_in_process(capsys, [*args, *settings, "--threads", "1", "--out", str(tmp_path / "r")], message)
    report = json.loads((tmp_path / "r" / "bench.json").read_text())
    assert report["refused"] == [damaged.name] and message in report["artifacts"][-1]["error"]


def test_unknown_onnx_op_domain_is_refused(tmp_path, capsys):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Steal", ["image"], ["logits"], domain="com.evil")], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    path = fake_artifact(tmp_path, payload=model.SerializeToString())
    refused_in_process(capsys, ["inspect", str(path)], "damaged or not supported by this runtime", "com.evil")


def test_a_damaged_artifact_through_the_installed_cli(tmp_path, real_artifacts):
    target = "executorch" if "executorch" in real_artifacts else next(iter(real_artifacts))
    damaged = _damage(real_artifacts[target], tmp_path / "export", "truncated")
    assert_refused(cli("inspect", damaged), "damaged or not supported by this runtime")


def test_a_runtime_that_aborts_the_process_is_contained(tmp_path, monkeypatch, capsys):
    """Targets marked load_may_crash are opened in a child first: an abort there is exit 2 here, not a dead command."""
    from dermmobile.targets import _MODULES

    monkeypatch.setitem(_MODULES, "aborting", "tests.aborting_target")
    hook = tmp_path / "hook"
    hook.mkdir()  # registers the same target in the child process
    (hook / "sitecustomize.py").write_text(
        "from dermmobile.targets import _MODULES\n_MODULES['aborting'] = 'tests.aborting_target'\n"
    )
    paths = [str(hook), str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    path = fake_artifact(tmp_path / "export", fmt="aborting")
    refused_in_process(capsys, ["inspect", str(path)], "damaged or not supported by this runtime", "crashed (SIGABRT)")


# -- 5. writes never follow links -------------------------------------------------------------------------------
@pytest.fixture
def outside(tmp_path):
    """A file outside every output folder that a planted link points at; it must never change."""
    victim = tmp_path / "outside" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    yield victim
    assert victim.read_text() == "precious"


def test_atomic_writes_replace_a_planted_link_instead_of_following_it(tmp_path, outside):
    from dermmobile.fsutil import atomic_write_bytes, atomic_write_json

    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.json", "b.png"):
        os.symlink(outside, out / name)
    atomic_write_json(out / "a.json", {"x": 1})
    atomic_write_bytes(out / "b.png", b"png")
    assert not (out / "a.json").is_symlink() and json.loads((out / "a.json").read_text()) == {"x": 1}
    assert (out / "b.png").read_bytes() == b"png"


def test_a_staged_folder_replaces_the_old_set_whole_or_not_at_all(tmp_path, outside):
    """The web site's and the Android assets' swap: a failed fill keeps the previous set, a success replaces it, and a
    link planted where the set was is dropped, never followed."""
    from dermmobile.fsutil import staged_folder

    final = tmp_path / "site"
    with staged_folder(final) as staging:
        (staging / "index.html").write_text("first")
    with pytest.raises(RuntimeError), staged_folder(final) as staging:
        (staging / "index.html").write_text("half")
        raise RuntimeError("the build failed half way")
    assert (final / "index.html").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["outside", "site"]
    with staged_folder(final) as staging:
        (staging / "index.html").write_text("second")
    assert [p.name for p in final.iterdir()] == ["index.html"] and (final / "index.html").read_text() == "second"
    planted = tmp_path / "planted"
    os.symlink(outside.parent, planted)
    with staged_folder(planted) as staging:
        (staging / "index.html").write_text("third")
    assert planted.is_dir() and not planted.is_symlink() and sorted(p.name for p in outside.parent.iterdir()) == [outside.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "planted", "site"]
    (tmp_path / "was-a-file").write_text("x")
    with staged_folder(tmp_path / "was-a-file") as staging:
        (staging / "index.html").write_text("fourth")
    assert (tmp_path / "was-a-file").is_dir() and len(list(tmp_path.iterdir())) == 4  # nothing .old left behind


def test_writes_into_a_planted_folder_link_are_refused(tmp_path, outside):
    from dermmobile.fsutil import atomic_write_bytes

    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside.parent, out / "confusions")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        atomic_write_bytes(out / "confusions" / "precious.txt", b"overwritten")


def test_export_lock_and_manifest_links_are_never_followed(tiny_checkpoint, tmp_path, outside, capsys):
    out = tmp_path / "export"
    out.mkdir()
    os.symlink(outside, out / ".tiny_cnn-torchscript-none.ptl.lock")
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--target", "torchscript", "--out", str(out)]
    assert main(args) == EXIT_BAD_INPUT
    assert "lock file" in capsys.readouterr().out  # the per-target error in the summary table
    os.unlink(out / ".tiny_cnn-torchscript-none.ptl.lock")
    os.symlink(outside, out / "tiny_cnn-torchscript-none.ptl.json")
    os.symlink(outside, out / "tiny_cnn-torchscript-none.ptl")
    assert main(args) == 0
    artifact = load_artifact(out / "tiny_cnn-torchscript-none.ptl")
    assert not artifact.path.is_symlink() and not artifact.manifest_file.is_symlink()


def test_evaluation_png_and_report_links_are_never_followed(tiny_checkpoint, synthetic_root, tmp_path, outside, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    for name in ("evaluation.png", "evaluation.md", "evaluation.json"):
        os.symlink(outside, out / name)
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_root), "--split", "all"]
    assert main([*args, "--out", str(out)]) == 0
    assert all(not (out / name).is_symlink() for name in ("evaluation.png", "evaluation.md", "evaluation.json"))
    link = tmp_path / "link-to-out"
    os.symlink(out, link)
    refused_in_process(capsys, [*args, "--out", str(link)], "symbolic link")


def test_checkpoint_and_log_links_are_never_followed(tmp_path, outside):
    import torch

    from dermmobile.checkpoint import CheckpointMeta, save_checkpoint
    from dermmobile.fsutil import append_text
    from dermmobile.models import build_model

    out = tmp_path / "run"
    out.mkdir()
    os.symlink(outside, out / "best.safetensors")
    torch.manual_seed(0)
    save_checkpoint(out / "best.safetensors", build_model("tiny_cnn", 3), CheckpointMeta("tiny_cnn", LABELS, dict(SPEC)))
    assert not (out / "best.safetensors").is_symlink()
    os.symlink(outside, out / "log.jsonl")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        append_text(out / "log.jsonl", "{}\n")


def test_bench_report_links_are_never_followed(tmp_path, outside, capsys):
    from tests.test_bench import PHONE_ROW

    out = tmp_path / "report"
    out.mkdir()
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([PHONE_ROW]))
    (out / "bench.json").write_text(json.dumps(bench_report([])))
    os.symlink(outside, out / "bench.md")
    assert main(["bench", "--merge", str(rows), "--out", str(out)]) == 0
    assert not (out / "bench.md").is_symlink()


# -- 6. two exports of different checkpoints into one folder ----------------------------------------------------
def test_two_exports_of_different_checkpoints_never_mix(tiny_checkpoint, synthetic_root, tmp_path):
    import torch

    from dermmobile.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from dermmobile.models import build_model

    first = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_checkpoint(
        other,
        build_model("tiny_cnn", len(first.meta.labels)),
        CheckpointMeta("tiny_cnn", first.meta.labels, first.meta.preprocess),
    )
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "dermmobile", "export", "--target", "torchscript", "--out", str(out)]
    command += ["--check-data", str(synthetic_root), "--checkpoint"]
    runs = [subprocess.Popen([*command, str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for ckpt in (tiny_checkpoint, other)]  # fmt: skip
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    artifact = load_artifact(out / "tiny_cnn-torchscript-none.ptl")  # sha256 and the parity binding verified
    manifest = artifact.manifest
    assert manifest.parity["artifact_sha256"] == manifest.sha256
    assert manifest.parity["checkpoint_sha256"] == manifest.checkpoint_sha256
    winner = tiny_checkpoint if manifest.checkpoint_sha256 == first.file_sha256 else other
    from dermmobile.runtime import open_runtime
    from dermmobile.targets.base import TorchRuntime

    batch = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    expected = TorchRuntime(load_checkpoint(winner).model).predict(batch)
    assert np.abs(open_runtime(artifact).predict(batch) - expected).max() < 1e-4  # the file is the run the manifest names


def test_a_manifest_whose_parity_came_from_another_run_is_refused(tmp_path, capsys):
    path = fake_artifact(tmp_path)
    data = json.loads(manifest_path(path).read_text())
    data["parity"] = {"agreement": 1.0, "artifact_sha256": "0" * 64, "checkpoint_sha256": data["checkpoint_sha256"]}
    rewrite(path, json.dumps(data))
    refused_in_process(capsys, ["inspect", str(path)], "mixes two exports")


def test_a_manifest_is_never_written_for_a_file_another_run_replaced(tmp_path):
    from dermmobile.errors import ExportFailedError

    path = fake_artifact(tmp_path)
    manifest = load_artifact(path).manifest
    path.write_bytes(b"replaced by another export")
    with pytest.raises(ExportFailedError, match="changed on disk"):
        write_manifest(path, manifest, expected_sha256=manifest.sha256)


# -- 7. untrusted text to the terminal and to matplotlib ---------------------------------------------------------
EVIL = ["\x1b[2J\x1b[31mred", "car\rriage", "$\\undefinedcmd{$", "bidi\u202eevil", "bell\x07"]


def test_labels_reach_the_terminal_escaped(tmp_path, capsys):
    path = fake_artifact(tmp_path, labels=EVIL[:3])
    main(["inspect", str(path)])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\\x1b[2J" in out


def test_error_messages_reach_the_terminal_escaped(tmp_path, capsys):
    evil = tmp_path / "evil\x1b[31m.onnx"
    assert main(["inspect", str(evil)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31m" in err


def test_plots_draw_mathtext_like_labels_as_plain_text(tmp_path):
    from dermmobile.metrics import plot_confusions

    path = plot_confusions([np.eye(len(EVIL), dtype=int)], ["$\\frac{$"], EVIL, tmp_path / "c.png", suptitle="$\\x{$")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_plots_a_class_folder_named_like_mathtext(tmp_path, capsys):
    import shutil

    from dermmobile.checkpoint import CheckpointMeta, save_checkpoint
    from dermmobile.models import build_model
    from dermmobile.synthetic import make_synthetic_dataset

    classes = ["$\\undefinedcmd{$", "plain"]
    data = make_synthetic_dataset(tmp_path / "data", per_class=2, size=40, classes=classes)
    checkpoint = save_checkpoint(
        tmp_path / "m.safetensors", build_model("tiny_cnn", 2), CheckpointMeta("tiny_cnn", sorted(classes), dict(SPEC))
    )
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "evaluation.png").stat().st_size > 1000
    shutil.rmtree(data)


def test_printable_leaves_no_control_characters():
    from hypothesis import given
    from hypothesis import strategies as st

    from dermmobile.display import printable

    @given(st.text())
    def check(text):
        shown = printable(text)
        assert not any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E for c in shown)
        if text.isprintable():
            assert shown == text

    check()
    assert printable("name\udcff.png") == "name\\udcff.png"  # an undecodable byte of a file name


# -- 8. output paths ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "evaluate", "export", "bench"])
def test_out_that_is_a_regular_file_is_a_clear_error(tiny_checkpoint, synthetic_root, tmp_path, capsys, command):
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    args = {
        "train": ["train", "--data", str(synthetic_root), "--arch", "tiny_cnn", "--epochs", "1"],
        "evaluate": ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_root)],
        "export": ["export", "--checkpoint", str(tiny_checkpoint), "--target", "torchscript"],
        "bench": ["bench", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_root)],
    }[command]
    refused_in_process(capsys, [*args, "--out", str(out)], "is a regular file, not a folder")
    refused_in_process(capsys, [*args, "--out", str(out / "sub")], "cannot be created")
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["export", "--timeout", "nan"], "--timeout"),
        (["export", "--timeout", "-1"], "--timeout"),
        (["train", "--image-size", "100000", "--weights", "none"], "4096"),
    ],
    ids=["timeout-nan", "timeout-negative", "image-size"],
)
def test_numeric_options_out_of_range(tiny_checkpoint, synthetic_root, tmp_path, capsys, args, needle):
    source = (
        ["--checkpoint", str(tiny_checkpoint)] if args[0] == "export" else ["--data", str(synthetic_root), "--arch", "tiny_cnn"]
    )
    refused_in_process(capsys, [*args, *source, "--out", str(tmp_path / "o")], needle)


def test_a_killed_converter_leaves_no_temporary_folders(tiny_checkpoint, tmp_path, monkeypatch):
    import tests.fake_target as fake
    from dermmobile.checkpoint import load_checkpoint
    from dermmobile.exporter import plan_export, run_plan
    from dermmobile.targets import _MODULES

    monkeypatch.setitem(_MODULES, "fake", "tests.fake_target")
    record = tmp_path / "made.txt"
    monkeypatch.setenv("DERMMOBILE_FAKE_TARGET", json.dumps({"hang": 600.0, "tempdir": str(record)}))
    checkpoint = load_checkpoint(tiny_checkpoint)
    (outcome,) = run_plan(checkpoint, plan_export(checkpoint, "fake", "none", tmp_path / "out", timeout=20))
    assert "exceeded --timeout" in outcome.error
    made = Path(record.read_text())  # the folder the converter made before it was killed
    assert made.name.startswith("fake-converter-") and not made.exists() and not made.parent.exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]
    assert fake.TARGET  # the module is importable in the parent too


# -- the shared readers ------------------------------------------------------------------------------------------
def test_json_reader_never_lets_anything_but_bad_input_escape():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from dermmobile.readers import parse_json

    pieces = st.sampled_from(["[", "]", "{", "}", '"', "\\", ":", ",", "1e400", "NaN", "-", "0", "true", '"a":', " ", "\x00"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(pieces, max_size=80).map("".join) | st.binary(max_size=64))
    def check(data):
        with contextlib.suppress(BadInputError):
            parse_json(data, "fuzz")

    check()


def test_the_bench_row_json_schema_is_up_to_date():
    from dermmobile.bench.schema import SCHEMA_FILE, json_schema_text

    assert SCHEMA_FILE.read_text() == json_schema_text(), "run: python -m dermmobile.bench.schema"


def test_bench_rows_are_either_valid_or_refused_by_name():
    """Any JSON-ish row: check_row returns a row the schema accepts again, or refuses it naming a field."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from dermmobile.bench.merge import check_row
    from dermmobile.bench.schema import BenchRow
    from tests.test_bench import PHONE_ROW

    values = (
        st.none()
        | st.booleans()
        | st.integers(-5, 10**6)
        | st.floats()
        | st.text(max_size=8)
        | st.lists(st.integers(), max_size=2)
    )
    keys = st.sampled_from([*PHONE_ROW, "status", "load_ms", "top1_matches_golden", "unknown"])

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(keys, values, max_size=4), st.dictionaries(st.sampled_from(["p50", "p90", "p99", "std"]), values))
    def check(changes, latency):
        row = {**PHONE_ROW, **changes}
        if latency and isinstance(row.get("latency_ms"), dict):
            row["latency_ms"] = {**row["latency_ms"], **latency}
        try:
            checked = check_row(row, "row 0")
        except BadInputError as exc:
            assert str(exc).startswith("row 0: ")
        else:
            BenchRow.model_validate(checked)

    check()


def test_manifest_numbers_are_either_consistent_or_refused(tmp_path_factory):
    """Random sizes, shapes and quantization numbers: a manifest loads only when they describe one model."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    sizes = st.integers(-2, 5000) | st.floats(allow_nan=False) | st.booleans()

    @settings(max_examples=200, deadline=None)
    @given(
        resize=sizes,
        crop=sizes,
        side=sizes,
        classes=sizes,
        scale=st.none() | st.floats(),
        zero=st.none() | st.integers(-300, 300),
    )
    def check(resize, crop, side, classes, scale, zero):
        folder = tmp_path_factory.mktemp("m")
        path = fake_artifact(folder)
        data = json.loads(manifest_path(path).read_text())
        data["preprocess"].update(resize=resize, crop=crop)
        data["input"].update(
            shape=[1, 3, side, side], dtype="int8" if zero is not None else "float32", scale=scale, zero_point=zero
        )
        data["output"]["shape"] = [1, classes]
        text = json.dumps(data)
        rewrite(path, text)
        try:
            manifest = load_artifact(path).manifest
        except BadInputError:
            return
        crop_side = manifest.input.shape[2]
        assert 1 <= crop_side <= int(data["preprocess"]["resize"]) <= 4096 and manifest.output.shape == [1, len(LABELS)]
        assert zero is None or (scale is not None and scale > 0 and -128 <= zero <= 127)

    check()
