"""App integration: tokenizer test vectors, labels, INTEGRATION.md, and parity of the Kotlin sample tokenizer.

The Kotlin tokenizer (samples/android/tokenizer, plain Kotlin) is compiled with Debian's kotlinc 1.3 and run
against the vectors of the embedded teacher: every case must give the Hugging Face ids. Without kotlinc the
parity tests skip locally and fail when $CI is set (CI installs the `kotlin` package).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.errors import UserError
from edgekit.integration import (
    INTEGRATION_FILE,
    KOTLIN_TABLES,
    LABELS_FILE,
    SWIFT_TABLES,
    VECTORS_FILE,
    check_app_assets,
    render_unicode_tables,
    unicode_tables,
    write_app_assets,
)
from edgekit.model import load_teacher
from edgekit.tokenizer_cases import CASES, CASES_BY_CATEGORY

REPO = Path(__file__).resolve().parents[1]
KOTLIN_DIR = REPO / "samples/android/tokenizer/src/main/kotlin/edgekit/tokenizer"
KOTLIN_SOURCES = ["WordPieceTokenizer.kt", "MiniJson.kt", "UnicodeTables.kt", "TokenizerParity.kt"]
SWIFT_TOKENIZER = REPO / "samples/ios/Sources/EdgekitTokenizer/WordPieceTokenizer.swift"
SEQ_LEN = 128

#: Artifact dicts as manifest.json lists them (the shapes and dtypes real converters report).
ARTIFACTS = [
    {
        "path": "model-fp32.onnx",
        "format": "onnx",
        "precision": "fp32",
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [-1, -1]},
            {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]},
        ],
        "outputs": [{"name": "embedding", "dtype": "float32", "shape": [-1, 384]}],
    },
    {
        "path": "model-int8.tflite",
        "format": "tflite",
        "precision": "int8",
        "inputs": [
            {"name": "input_ids", "dtype": "int32", "shape": [1, 128]},
            {"name": "attention_mask", "dtype": "int32", "shape": [1, 128]},
        ],
        "outputs": [{"name": "embedding", "dtype": "float32", "shape": [1, 384]}],
    },
    {
        "path": "model-fp16.mlpackage",
        "format": "coreml",
        "precision": "fp16",
        "inputs": [
            {"name": "input_ids", "dtype": "int32", "shape": [1, 128]},
            {"name": "attention_mask", "dtype": "int32", "shape": [1, 128]},
        ],
        "outputs": [{"name": "embedding", "dtype": "float32", "shape": [1, 384]}],
    },
]


def _classifier_artifacts(num_labels: int) -> list[dict]:
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return [
        {
            "path": "model-fp32.tflite",
            "format": "tflite",
            "precision": "fp32",
            "inputs": [{"name": n, "dtype": "int32", "shape": [1, 128]} for n in names],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, num_labels]}],
        }
    ]


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


@pytest.fixture(scope="module")
def teacher_bundle(teacher, tmp_path_factory) -> Path:
    bundle = tmp_path_factory.mktemp("app-teacher")
    teacher.tokenizer.save_pretrained(bundle / "tokenizer")
    written = write_app_assets(bundle, teacher, SEQ_LEN, ARTIFACTS)
    assert {p.name for p in written} == {VECTORS_FILE, INTEGRATION_FILE}
    return bundle


@pytest.fixture(scope="module")
def classifier_bundle(tiny_model_dirs, tmp_path_factory) -> tuple[Path, object]:
    tiny = load_teacher(tiny_model_dirs["bert-classification"])
    bundle = tmp_path_factory.mktemp("app-classifier")
    written = write_app_assets(bundle, tiny, SEQ_LEN, _classifier_artifacts(len(tiny.labels)))
    assert {p.name for p in written} == {VECTORS_FILE, LABELS_FILE, INTEGRATION_FILE}
    return bundle, tiny


def _vectors(bundle: Path) -> dict:
    return json.loads((bundle / VECTORS_FILE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Cases and vectors
# --------------------------------------------------------------------------------------------


def test_cases_cover_the_edge_cases_apps_get_wrong():
    assert len(CASES) >= 220 and len(set(CASES)) == len(CASES)
    assert "" in CASES
    for category in (
        "accents_and_case",
        "cjk",
        "emoji_and_symbols",
        "punctuation",
        "numbers",
        "urls_emails_code",
        "word_pieces",
        "truncation",
    ):
        assert len(CASES_BY_CATEGORY[category]) >= 8, category
    assert any("\t" in t for t in CASES) and any("\u00a0" in t for t in CASES) and any("\x00" in t for t in CASES)
    assert any(len(t) > 2000 for t in CASES)


def test_teacher_vectors_are_exactly_what_teacher_tokenize_gives(teacher, teacher_bundle):
    data = _vectors(teacher_bundle)
    cases = data["cases"]
    assert len(cases) >= 200 and len(cases) == len(CASES)
    expected = teacher.tokenize([c["text"] for c in cases], SEQ_LEN)
    for i, case in enumerate(cases):
        assert case["input_ids"] == expected["input_ids"][i].tolist()
        assert case["attention_mask"] == expected["attention_mask"][i].tolist()
        assert len(case["input_ids"]) == SEQ_LEN
        assert "token_type_ids" not in case  # the embedding teacher takes input_ids + attention_mask only
    settings = data["tokenizer"]
    assert settings["app_tokenizer_supported"] is True
    assert settings["do_lower_case"] is True and settings["strip_accents"] is True and settings["tokenize_chinese_chars"] is True
    assert settings["max_length"] == SEQ_LEN
    assert settings["special_token_ids"] == {"[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[PAD]": 0, "[MASK]": 103}
    assert settings["input_names"] == ["input_ids", "attention_mask"]
    vocab = teacher_bundle / "tokenizer" / "vocab.txt"
    assert settings["vocab_sha256"] == hashlib.sha256(vocab.read_bytes()).hexdigest()


def test_teacher_vectors_include_the_edge_cases(teacher_bundle):
    by_text = {c["text"]: c for c in _vectors(teacher_bundle)["cases"]}
    assert by_text[""]["input_ids"][:3] == [101, 102, 0] and sum(by_text[""]["attention_mask"]) == 2
    long = by_text[" ".join(["word"] * 600)]
    assert sum(long["attention_mask"]) == SEQ_LEN and long["input_ids"][-1] == 102  # truncated, still ends with [SEP]
    assert sum(by_text[" ".join(["word"] * 126)]["attention_mask"]) == SEQ_LEN  # exactly fits
    assert by_text["café"]["tokens"] == by_text["CAFÉ"]["tokens"] == ["[CLS]", "cafe", "[SEP]"]
    assert len(by_text["我爱自然语言处理"]["tokens"]) == 2 + 8  # one token per ideograph
    assert "[UNK]" in by_text["😀"]["tokens"]
    assert len(by_text["antidisestablishmentarianism"]["tokens"]) > 4
    assert by_text["The capital of France is [MASK]."]["input_ids"].count(103) == 1
    assert by_text["x" * 101]["tokens"] == ["[CLS]", "[UNK]", "[SEP]"]  # longer than max_input_chars_per_word
    assert by_text["\x00"]["tokens"] == ["[CLS]", "[SEP]"]


def test_classifier_vectors_carry_token_type_ids_and_labels(classifier_bundle):
    bundle, tiny = classifier_bundle
    data = _vectors(bundle)
    assert len(data["cases"]) >= 200
    assert all(c["token_type_ids"] == [0] * SEQ_LEN for c in data["cases"])
    assert data["tokenizer"]["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    labels = json.loads((bundle / LABELS_FILE).read_text())
    assert labels == {str(k): v for k, v in tiny.labels.items()} and len(labels) == 3


# --------------------------------------------------------------------------------------------
# INTEGRATION.md
# --------------------------------------------------------------------------------------------


def _sections(md: str) -> dict[str, str]:
    parts = re.split(r"^### `([^`]+)`.*$", md, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def _assert_md_matches_artifacts(md: str, artifacts: list[dict]) -> None:
    sections = _sections(md)
    assert set(sections) == {a["path"] for a in artifacts}
    for art in artifacts:
        body = sections[art["path"]]
        for kind, key in (("input", "inputs"), ("output", "outputs")):
            for t in art[key]:
                row = f"| {kind} | `{t['name']}` | {t['dtype']} | `{t['shape']}` |"
                assert row in body, f"{art['path']}: missing {row}"
        assert body.count("| input |") == len(art["inputs"]) and body.count("| output |") == len(art["outputs"])


def test_integration_md_states_names_dtypes_shapes_and_processing(teacher_bundle):
    md = (teacher_bundle / INTEGRATION_FILE).read_text()
    _assert_md_matches_artifacts(md, ARTIFACTS)
    for needle in (
        "`input_ids`",
        "`attention_mask`",
        "`embedding`",
        "mean-pooled over the attention mask and L2-normalised",
        "do not pool or\nnormalise again",
        "vocab.txt",
        "padded/truncated to 128 tokens",
        "tokenizer_test_vectors.json",
        "```kotlin",
        "```swift",
        "runSignature",
        "EdgekitCoreMLModel",
        "computeUnits",
        "OrtSession",
        "TokenizerConfig(doLowerCase = true, stripAccents = true, tokenizeChineseChars = true, maxLength = 128)",
    ):
        assert needle in md, needle
    assert "{{" not in md and "{%" not in md


def test_integration_md_for_a_classifier_has_softmax_labels_and_token_type_ids(classifier_bundle):
    bundle, tiny = classifier_bundle
    md = (bundle / INTEGRATION_FILE).read_text()
    _assert_md_matches_artifacts(md, _classifier_artifacts(3))
    assert "softmax" in md and "labels.json" in md and "| 0 | label_0 |" in md
    assert "`token_type_ids` is all zeros" in md
    assert "no `.mlpackage` artifact" in md and "no `.onnx` artifact" in md


# --------------------------------------------------------------------------------------------
# Refusing missing or altered vocabularies
# --------------------------------------------------------------------------------------------


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_check_app_assets_accepts_the_bundle_and_refuses_missing_or_altered_vocab(teacher_bundle, tmp_path):
    assert check_app_assets(teacher_bundle)["format"] == "edgekit-tokenizer-test-vectors"
    missing = _copy_bundle(teacher_bundle, tmp_path / "missing")
    (missing / "tokenizer" / "vocab.txt").unlink()
    with pytest.raises(UserError, match="vocab.txt is missing") as err:
        check_app_assets(missing)
    assert "\n" not in str(err.value)
    altered = _copy_bundle(teacher_bundle, tmp_path / "altered")
    vocab = altered / "tokenizer" / "vocab.txt"
    vocab.write_text(vocab.read_text(encoding="utf-8").replace("\nhello\n", "\nhullo\n"), encoding="utf-8")
    with pytest.raises(UserError, match="was altered") as err:
        check_app_assets(altered)
    assert "\n" not in str(err.value)
    no_vectors = _copy_bundle(teacher_bundle, tmp_path / "no-vectors")
    (no_vectors / VECTORS_FILE).unlink()
    with pytest.raises(UserError, match="tokenizer_test_vectors.json is missing"):
        check_app_assets(no_vectors)


def test_write_app_assets_refuses_a_vocab_file_that_disagrees_with_the_tokenizer(teacher, teacher_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(teacher_bundle / "tokenizer", bundle / "tokenizer")
    vocab = bundle / "tokenizer" / "vocab.txt"
    lines = vocab.read_text(encoding="utf-8").split("\n")
    lines[2000], lines[2001] = lines[2001], lines[2000]
    vocab.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match="does not list the tokenizer's") as err:
        write_app_assets(bundle, teacher, SEQ_LEN, ARTIFACTS)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# The sample tokenizers: generated tables, Swift port, Android project
# --------------------------------------------------------------------------------------------


def test_unicode_tables_of_the_samples_are_current():
    """The Kotlin/Swift tables equal what the installed tokenizers library does (regenerate on upgrade)."""
    import tokenizers

    tables = unicode_tables()
    hint = "run `python -m edgekit.integration --write-unicode-tables`"
    assert KOTLIN_TABLES.read_text(encoding="utf-8") == render_unicode_tables(tables, "kotlin", tokenizers.__version__), hint
    assert SWIFT_TABLES.read_text(encoding="utf-8") == render_unicode_tables(tables, "swift", tokenizers.__version__), hint


def test_swift_tokenizer_is_a_port_of_the_kotlin_one():
    kotlin = (KOTLIN_DIR / "WordPieceTokenizer.kt").read_text()
    swift = SWIFT_TOKENIZER.read_text()
    for fn in (
        "splitOnAddedTokens",
        "regionMatches",
        "normalize",
        "splitWords",
        "wordPiece",
        "parseVocab",
        "isControl",
        "isWhitespace",
        "isPunctuation",
        "isNonSpacingMark",
        "isChineseChar",
        "encode",
        "tokenize",
    ):
        assert f"fun {fn}(" in kotlin and f"func {fn}(" in swift, fn
    # Same explicit whitespace set in both (the rest of the classes come from the generated tables).
    assert "cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000" in kotlin
    assert "cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000" in swift


def test_android_sample_is_a_complete_gradle_project():
    root = REPO / "samples/android"
    settings = (root / "settings.gradle.kts").read_text()
    assert 'include(":tokenizer", ":edgekit", ":app")' in settings
    assert "com.google.ai.edge.litert:litert" in (root / "edgekit/build.gradle.kts").read_text()
    manifest = (root / "app/src/main/AndroidManifest.xml").read_text()
    assert ".MainActivity" in manifest and "android.intent.category.LAUNCHER" in manifest
    for rel in (
        "build.gradle.kts",
        "gradle/wrapper/gradle-wrapper.properties",
        "app/build.gradle.kts",
        "app/src/main/kotlin/edgekit/demo/MainActivity.kt",
        "edgekit/src/main/kotlin/edgekit/android/EdgekitModel.kt",
        "tokenizer/build.gradle.kts",
        "tokenizer/src/test/kotlin/edgekit/tokenizer/WordPieceTokenizerTest.kt",
    ):
        assert (root / rel).is_file(), rel
    # The tokenizer module must stay plain Kotlin (it is compiled with kotlinc 1.3 in CI, without Android).
    for src in KOTLIN_DIR.glob("*.kt"):
        text = "\n".join(line for line in src.read_text().splitlines() if not line.lstrip().startswith("//"))
        assert "import android" not in text, src
        for newer in (
            r"\.lowercase\(\)",
            r"\.uppercase\(\)",
            r"\bbuildList\b",
            r"\bbuildMap\b",
            r"\.code\b",
            r"(?<![\w.])Char\(",
            r"\.digitToInt\(",
        ):
            assert not re.search(newer, text), f"{src.name} matches {newer!r}: an API kotlinc 1.3 does not have"


# --------------------------------------------------------------------------------------------
# Kotlin parity (kotlinc)
# --------------------------------------------------------------------------------------------


def _kotlinc() -> str:
    path = shutil.which("kotlinc")
    if path is None:
        message = "kotlinc not found: install Debian's `kotlin` package (apt-get install -y kotlin)"
        if os.environ.get("CI"):
            pytest.fail(message + " — CI must run the Kotlin tokenizer parity test")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def parity_jar(request, tmp_path_factory) -> Path:
    """The Kotlin tokenizer + runner compiled once; cached in pytest's cache dir by source hash (kotlinc 1.3 takes ~10 s)."""
    kotlinc = _kotlinc()
    digest = hashlib.sha256()
    for name in KOTLIN_SOURCES:
        digest.update((KOTLIN_DIR / name).read_bytes())
    real = Path(os.path.realpath(kotlinc))  # the compiler install, not `kotlinc -version` (2 s of JVM start-up)
    digest.update(f"{real}:{real.stat().st_mtime_ns}".encode())
    try:
        cache_dir = Path(request.config.cache.mkdir("edgekit-kotlin-parity"))
    except Exception:  # no cache provider (-p no:cacheprovider)
        cache_dir = tmp_path_factory.mktemp("kotlin")
    jar = cache_dir / f"parity-{digest.hexdigest()[:16]}.jar"
    if not jar.is_file():
        tmp = tmp_path_factory.mktemp("kotlin-build") / "parity.jar"
        proc = subprocess.run(
            [kotlinc, *[str(KOTLIN_DIR / n) for n in KOTLIN_SOURCES], "-include-runtime", "-d", str(tmp)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert proc.returncode == 0 and tmp.is_file(), "kotlinc failed:\n" + "\n".join(errors or proc.stderr.splitlines()[-20:])
        for stale in cache_dir.glob("parity-*.jar"):  # jars of older sources
            stale.unlink()
        shutil.move(str(tmp), jar)
    return jar


def _run_parity(jar: Path, *args: str) -> subprocess.CompletedProcess:
    java = shutil.which("java")
    assert java, "java not found (kotlinc needs a JDK)"
    return subprocess.run(
        [java, "-cp", str(jar), "edgekit.tokenizer.TokenizerParityKt", *args], capture_output=True, text=True, timeout=300
    )


def test_kotlin_tokenizer_matches_hugging_face_on_every_teacher_vector(parity_jar, teacher_bundle):
    proc = _run_parity(parity_jar, str(teacher_bundle / VECTORS_FILE))
    n = len(_vectors(teacher_bundle)["cases"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert f"{n} passed, 0 failed" in proc.stdout


def test_kotlin_tokenizer_matches_on_the_classifier_vectors_with_token_type_ids(parity_jar, classifier_bundle):
    bundle, _ = classifier_bundle
    proc = _run_parity(parity_jar, str(bundle / VECTORS_FILE), str(bundle / "tokenizer" / "vocab.txt"))
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_kotlin_tokenizer_matches_with_a_pruned_vocabulary(parity_jar, teacher, tmp_path):
    """A vocabulary-pruned bundle: other ids, many more [UNK]s and word pieces; the Kotlin tokenizer still matches."""
    from transformers import BertTokenizerFast

    full = teacher.tokenizer.convert_ids_to_tokens(list(range(len(teacher.tokenizer))))
    kept = full[:1000] + [t for t in full[1000:] if (len(t) <= 3 or t.startswith("##")) and t.isascii()][:4000]
    vocab_dir = tmp_path / "pruned-src"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")
    pruned_tok = BertTokenizerFast(vocab_file=str(vocab_dir / "vocab.txt"), do_lower_case=True)
    pruned = dataclasses.replace(teacher, tokenizer=pruned_tok)
    bundle = tmp_path / "bundle"
    write_app_assets(bundle, pruned, SEQ_LEN, ARTIFACTS)
    data = _vectors(bundle)
    assert data["tokenizer"]["vocab_size"] == len(kept) and data["summary"]["with_unk"] > 100
    proc = _run_parity(parity_jar, str(bundle / VECTORS_FILE))
    assert proc.returncode == 0 and f"{len(data['cases'])} passed, 0 failed" in proc.stdout, proc.stdout[-3000:]


def test_kotlin_runner_reports_mismatches_and_refuses_missing_or_altered_vocab(parity_jar, teacher_bundle, tmp_path):
    bundle = _copy_bundle(teacher_bundle, tmp_path / "b")
    data = _vectors(bundle)
    data["cases"][3]["input_ids"][1] = 7  # what a drifting app tokenizer would look like
    (bundle / VECTORS_FILE).write_text(json.dumps(data), encoding="utf-8")
    proc = _run_parity(parity_jar, str(bundle / VECTORS_FILE))
    assert proc.returncode == 1 and f"{len(data['cases']) - 1} passed, 1 failed" in proc.stdout and "MISMATCH case 3" in proc.stdout

    vocab = bundle / "tokenizer" / "vocab.txt"
    vocab.write_text(vocab.read_text(encoding="utf-8") + "extra\n", encoding="utf-8")
    proc = _run_parity(parity_jar, str(bundle / VECTORS_FILE))
    assert proc.returncode == 2 and "was altered" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    vocab.unlink()
    proc = _run_parity(parity_jar, str(bundle / VECTORS_FILE))
    assert proc.returncode == 2 and "is missing" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# The export writes the assets (api.export -> write_app_assets)
# --------------------------------------------------------------------------------------------


def test_export_writes_vectors_labels_and_integration_md_matching_the_manifest(tiny_model_dirs, tmp_path):
    from edgekit import api

    out = tmp_path / "bundle"
    api.export(
        "pixel4",
        tiny_model_dirs["bert-classification"],
        formats=["onnx", "tflite"],
        precisions=["fp32"],
        out=out,
        max_texts=8,
        latency_repeats=2,
        allow_over_budget=True,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {f["path"] for f in manifest["files"]}
    assert {VECTORS_FILE, LABELS_FILE, INTEGRATION_FILE} <= listed  # written before the inventory, so hashed
    _assert_md_matches_artifacts((out / INTEGRATION_FILE).read_text(), manifest["artifacts"])
    vectors = check_app_assets(out)
    assert len(vectors["cases"]) >= 200 and vectors["tokenizer"]["max_length"] == manifest["tokenizer"]["max_length"]
