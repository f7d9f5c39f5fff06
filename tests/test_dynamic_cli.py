"""Dynamic inference through the real CLI on a tiny model: the report shows exit rates / schedules, bad input exits 2."""

from __future__ import annotations

import json

from tests.conftest import run_cli
from tests.test_cli import _assert_user_error

FAST = ["--max-texts", "24", "--repeats", "3"]


def test_early_exit_export_reports_exit_rates(tiny_model_dirs, tmp_path):
    out = tmp_path / "ee"
    proc = run_cli(
        "export", "--model", str(tiny_model_dirs["bert-embedding"]), "--formats", "onnx", "--recipe", "early-exit:layers=1+int8",
        "--out", str(out), *FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    art = report["artifacts"][0]
    assert art["ops"]["If"] == 1 and [o["name"] for o in art["outputs"]][1] == "exit_layer"
    rates = art["dynamic"]["exit_rate"]
    assert set(rates) == {"layer 1", "layer 2 (full)"} and abs(sum(rates.values()) - 1) < 1e-6
    assert art["dynamic"]["provenance"].startswith("measured-host")
    assert report["passes"][0]["pass"] == "early-exit" and "threshold" in report["passes"][0]
    assert "Dynamic inference" in (out / "report.html").read_text()


def test_token_skip_export_has_topk_in_onnx_and_tflite(tiny_model_dirs, tmp_path):
    out = tmp_path / "ts"
    proc = run_cli(
        "export", "--model", str(tiny_model_dirs["bert-embedding"]), "--formats", "onnx,tflite", "--precision", "fp32",
        "--recipe", "token-skip:keep=0.5@1", "--out", str(out), *FAST,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    arts = {a["format"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}
    assert arts["onnx"]["ops"].get("TopK") == 1 and arts["tflite"]["ops"].get("TOPK_V2") == 1
    for art in arts.values():
        assert art["dynamic"]["kind"] == "token-skip (keep)"
        # sample texts are short: keeping half of the 128 positions keeps every real token
        assert art["fidelity"]["metrics"]["cosine_mean"] >= 0.9999


def test_bad_dynamic_recipes_exit_2_and_write_nothing(tiny_model_dirs, tmp_path):
    model = str(tiny_model_dirs["bert-embedding"])
    out = tmp_path / "bad"
    _assert_user_error(
        run_cli("export", "--model", model, "--recipe", "early-exit:layers=7", "--formats", "onnx", "--out", str(out)), "out of range", out
    )
    _assert_user_error(run_cli("export", "--model", model, "--recipe", "token-skip:keep=1.5@1", "--out", str(out)), "(0, 1]", out)
    _assert_user_error(
        run_cli("export", "--model", model, "--device", "pixel4", "--recipe", "token-skip:threshold=0.5@1", "--out", str(out)),
        "static shapes",
        out,
    )
