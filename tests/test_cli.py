"""The `edgekit` command as a user runs it (subprocess): a tiny end-to-end export and every error case."""

import json
from pathlib import Path

import pytest

from edgekit.bundle import sha256_file
from tests.conftest import run_cli

FAST = ["--max-texts", "16", "--repeats", "3"]


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bundle"
    proc = run_cli(
        "export",
        "--device",
        "pixel4",
        "--model",
        str(tiny_model_dirs["bert-embedding"]),
        "--formats",
        "onnx,tflite",
        "--precision",
        "fp32,int8",
        "--out",
        str(out),
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_bundle_has_artifacts_tokenizer_manifest_and_report(tiny_bundle):
    out, proc = tiny_bundle
    names = {p.name for p in out.iterdir()}
    assert {
        "model-fp32.onnx",
        "model-int8.onnx",
        "model-fp32.tflite",
        "model-int8.tflite",
        "manifest.json",
        "report.json",
        "report.html",
        "tokenizer",
    } <= names
    assert (out / "tokenizer" / "vocab.txt").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert f"report: {out / 'report.html'}" in proc.stdout
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_manifest_hashes_every_file_and_names_io(tiny_bundle):
    out, _ = tiny_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(files) == on_disk
    for rel, row in files.items():
        assert row["sha256"] == sha256_file(out / rel) and row["bytes"] == (out / rel).stat().st_size
    assert manifest["source_model"]["weights_sha256"] and manifest["tokenizer"]["max_length"] == 128
    assert manifest["device"]["name"] == "pixel4" and "onnxruntime" in manifest["versions"]
    for art in manifest["artifacts"]:
        assert [i["name"] for i in art["inputs"]] == ["input_ids", "attention_mask"]
        assert [o["name"] for o in art["outputs"]] == ["embedding"]


def test_report_numbers_are_measured_in_the_real_runtimes(tiny_bundle):
    out, _ = tiny_bundle
    report = json.loads((out / "report.json").read_text())
    arts = {a["path"]: a for a in report["artifacts"]}
    assert set(arts) == {"model-fp32.onnx", "model-int8.onnx", "model-fp32.tflite", "model-int8.tflite"}
    for name, art in arts.items():
        assert art["size"]["bytes"] == (out / name).stat().st_size
        assert art["size"]["without_embeddings_mb"] < art["size"]["mb"]
        assert art["fidelity"]["provenance"] == "measured-host" and art["fidelity"]["n_texts"] == 16
        assert art["latency"]["provenance"] == "measured-host" and art["latency"]["median_ms"] > 0
        assert art["latency"]["threads"] >= 1 and art["latency"]["repeats"] == 3
        floor = 0.9999 if art["precision"] == "fp32" else 0.98
        assert art["fidelity"]["metrics"]["cosine_mean"] >= floor, (name, art["fidelity"]["metrics"])
    assert arts["model-fp32.onnx"]["fidelity"]["runtime"] == "onnxruntime"
    assert arts["model-fp32.tflite"]["fidelity"]["runtime"] == "litert"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "model-int8.tflite" in html and "measured-host" in html


def test_refuses_to_overwrite_without_force(tiny_bundle, tiny_model_dirs):
    out, _ = tiny_bundle
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = run_cli("export", "--model", str(tiny_model_dirs["bert-embedding"]), "--out", str(out), *FAST)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def _assert_user_error(proc, fragment: str, out: Path) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_unknown_device(tmp_path):
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--device", "nokia3310", "--out", str(out)), "unknown device", out)


def test_missing_model_dir(tmp_path):
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--model", str(tmp_path / "nope"), "--out", str(out)), "does not exist", out)


def test_corrupt_model_dir(tmp_path, tiny_model_dirs):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dirs["bert-embedding"], bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--model", str(bad), "--out", str(out)), "corrupt", out)


def test_unsupported_architecture(tmp_path):
    bad = tmp_path / "gpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--model", str(bad), "--out", str(out)), "unsupported architecture", out)


def test_pickle_only_weights(tmp_path):
    from edgekit.tiny_models import build_tiny_model_dir

    d = build_tiny_model_dir(tmp_path / "pkl", pickle_only=True)
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--model", str(d), "--out", str(out)), "--allow-pickle", out)


def test_unknown_format_and_precision(tmp_path):
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--formats", "caffe", "--out", str(out)), "unknown format 'caffe'", out)
    _assert_user_error(run_cli("export", "--precision", "int3", "--out", str(out)), "unknown precision 'int3'", out)


def test_min_fidelity_is_a_cosine_and_needs_int8(tmp_path):
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--min-fidelity", "1.5", "--out", str(out)), "--min-fidelity 1.5 is not a cosine", out)
    _assert_user_error(run_cli("export", "--precision", "fp32", "--min-fidelity", "0.99", "--out", str(out)), "add int8", out)


def test_min_fidelity_keeps_sensitive_ops_float_and_says_so(tiny_model_dirs, tmp_path):
    out = tmp_path / "b"
    args = ["export", "--model", str(tiny_model_dirs["bert-embedding"]), "--formats", "onnx,tflite", "--precision", "int8"]
    proc = run_cli(*args, "--min-fidelity", "0.99999", "--out", str(out), "--allow-over-budget", *FAST)
    assert proc.returncode == 0, proc.stderr
    notes = {a["format"]: a["notes"] for a in json.loads((out / "report.json").read_text())["artifacts"]}
    kept = [n for n in notes["onnx"] if n.startswith("mixed precision for min fidelity 0.99999")]
    assert kept and "kept in fp32" in kept[0] and "int8 alone costs" in kept[0]
    assert not any("not reached" in n for n in notes["onnx"])  # keeping everything float always reaches it
    assert any("--min-fidelity 0.99999 not applied: tflite" in n for n in notes["tflite"])


def test_calibration_texts_are_kept_apart_from_verification(tiny_model_dirs, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(f"calibration sentence number {i} about the weather" for i in range(20)), encoding="utf-8")
    args = ["export", "--model", str(tiny_model_dirs["bert-embedding"]), "--formats", "onnx", "--precision", "int8", *FAST]
    out = tmp_path / "b"
    proc = run_cli(*args, "--calibration-texts", str(calib), "--out", str(out), "--allow-over-budget")
    assert proc.returncode == 0, proc.stderr
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any(f"learned from 20 texts of {calib}" in n and "measured on the 16 verification texts" in n for n in notes), notes
    assert not any("optimistic" in n for n in notes)
    biased = tmp_path / "biased"
    proc = run_cli(*args, "--out", str(biased), "--allow-over-budget")
    assert proc.returncode == 0, proc.stderr
    notes = json.loads((biased / "report.json").read_text())["notes"]
    assert any(n.startswith("int8 calibration used the same verification texts") and "--calibration-texts" in n for n in notes), notes
    missing = tmp_path / "m"
    _assert_user_error(run_cli(*args, "--calibration-texts", str(tmp_path / "nope.txt"), "--out", str(missing)), "does not exist", missing)


def test_devices_table_and_json():
    proc = run_cli("devices")
    assert proc.returncode == 0 and "pixel4" in proc.stdout and "iphone13" in proc.stdout
    data = json.loads(run_cli("devices", "--json").stdout)
    assert {"pixel4", "iphone13", "raspberry-pi-4"} <= {d["name"] for d in data}
    assert all(d["sources"] for d in data)


def test_help_explains_every_option():
    proc = run_cli("export", "--help")
    assert proc.returncode == 0
    for option in ("--device", "--model", "--formats", "--precision", "--out", "--force", "--recipe"):
        assert option in proc.stdout


def test_classifier_exports_logits_with_top1_and_kl(tiny_model_dirs, tmp_path):
    out = tmp_path / "cls"
    proc = run_cli(
        "export",
        "--model",
        str(tiny_model_dirs["bert-classification"]),
        "--formats",
        "onnx",
        "--precision",
        "fp32",
        "--out",
        str(out),
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    art = report["artifacts"][0]
    assert [o["name"] for o in art["outputs"]] == ["logits"]
    assert [i["name"] for i in art["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert art["fidelity"]["metrics"]["top1_agreement"] == 1.0 and art["fidelity"]["metrics"]["kl_mean"] < 1e-8
    assert report["teacher"]["labels"] == {"0": "label_0", "1": "label_1", "2": "label_2"}


def test_missed_budget_exits_3_with_the_bundle_written_unless_allowed(tiny_model_dirs, tmp_path):
    import yaml

    from edgekit.profiles import load_profile

    profile = load_profile("pixel4").model_dump(mode="json")
    profile["name"] = "tiny-budget"
    profile["budgets"] = {"size_mb": 0.5, "min_cosine": 0.99}
    path = tmp_path / "tiny-budget.yaml"
    path.write_text(yaml.safe_dump(profile))
    args = [
        "export",
        "--device",
        str(path),
        "--model",
        str(tiny_model_dirs["bert-embedding"]),
        "--formats",
        "onnx",
        "--precision",
        "fp32",
        *FAST,
    ]
    out = tmp_path / "over"
    proc = run_cli(*args, "--out", str(out))
    assert proc.returncode == 3, proc.stderr
    assert "budget missed" in proc.stderr and "size_mb" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    missed = [b for b in report["budgets"] if b["passed"] is False]
    assert [b["budget"] for b in missed] == ["size_mb"] and missed[0]["value"] > 0.5
    allowed = run_cli(*args, "--out", str(tmp_path / "allowed"), "--allow-over-budget")
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda p: p.pop("soc"), "'soc'"),
        (lambda p: p.update(ram_gb=-4), "'ram_gb'"),
        (lambda p: p["accelerators"].append({"kind": "fpga", "name": "x"}), "'accelerators.2.kind'"),
        (lambda p: p.update(formats=["onnx", "caffe"]), "'formats.1'"),
    ],
)
def test_bad_profile_file_is_one_line_exit_2(tmp_path, edit, fragment):
    import yaml

    from edgekit.profiles import load_profile

    profile = load_profile("pixel4").model_dump(mode="json")
    edit(profile)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(profile))
    out = tmp_path / "b"
    _assert_user_error(run_cli("export", "--device", str(path), "--out", str(out)), fragment, out)
