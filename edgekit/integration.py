"""App-integration assets of a bundle: tokenizer test vectors, label map and INTEGRATION.md.

The most common failure when a text model ships in an app is tokenization on the device that
silently differs from the Python tokenizer. Every bundle therefore carries:

- `tokenizer_test_vectors.json`: the tokenizer settings an app needs plus, for every string of
  `edgekit.tokenizer_cases`, the ids / attention mask / token type ids the teacher's Hugging Face
  tokenizer produces at the bundle's sequence length (the exact call of `Teacher.tokenize`). The
  Kotlin sample (`samples/android/tokenizer`) is checked against them in CI; the Swift sample's
  XCTest reads the same file.
- `labels.json` (classifiers): class id -> label.
- `INTEGRATION.md`: input/output names, dtypes and shapes of each artifact, pre- and
  post-processing, and copy-paste snippets for Android (LiteRT), iOS (Core ML) and ONNX Runtime.

`check_app_assets` refuses a bundle whose vocabulary is missing or altered, with a one-line error.

The sample tokenizers classify characters with tables generated from the `tokenizers` library
itself (`unicode_tables`), not with the phone's Unicode data: the Rust tokenizer uses its own,
older Unicode tables, and phones ship many different Unicode versions. Regenerate them with
`python -m edgekit.integration --write-unicode-tables` after upgrading `tokenizers`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import UserError
from edgekit.tokenizer_cases import categorized_cases

VECTORS_FILE = "tokenizer_test_vectors.json"
LABELS_FILE = "labels.json"
INTEGRATION_FILE = "INTEGRATION.md"
VECTORS_FORMAT = "edgekit-tokenizer-test-vectors"
VECTORS_VERSION = 1
#: The files of `tokenizer/` the sample tokenizers read (the rest serve Hugging Face-compatible tokenizers).
SAMPLE_TOKENIZER_FILES = ("vocab.txt",)

_REPO_ROOT = Path(__file__).resolve().parents[1]
KOTLIN_TABLES = _REPO_ROOT / "samples/android/tokenizer/src/main/kotlin/edgekit/tokenizer/UnicodeTables.kt"
SWIFT_TABLES = _REPO_ROOT / "samples/ios/Sources/EdgekitTokenizer/UnicodeTables.swift"


# --------------------------------------------------------------------------------------------
# Tokenizer settings (what an app-side tokenizer must be configured with)
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _backend_spec(tokenizer) -> dict[str, Any] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else json.loads(backend.to_str())


def _unsupported_reason(tokenizer, spec: dict[str, Any] | None) -> str:
    """Why the sample WordPiece tokenizers cannot reproduce `tokenizer` ('' when they can)."""
    if spec is None:
        return f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer"
    norm, pre, model = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if model.get("type") != "WordPiece":
        return f"the tokenizer model is {model.get('type')}, not WordPiece"
    if norm.get("type") != "BertNormalizer":
        return f"the normalizer is {norm.get('type')}, not BertNormalizer"
    if pre.get("type") != "BertPreTokenizer":
        return f"the pre-tokenizer is {pre.get('type')}, not BertPreTokenizer"
    for tok in spec.get("added_tokens") or []:
        if tok.get("normalized") or tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
            return f"added token {tok.get('content')!r} uses normalized/lstrip/rstrip/single_word matching"
    if getattr(tokenizer, "padding_side", "right") != "right" or getattr(tokenizer, "truncation_side", "right") != "right":
        return "padding or truncation is on the left"
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
        return "the tokenizer has no [CLS]/[SEP]/[PAD] tokens"
    probe = tokenizer("probe")["input_ids"]
    if probe[0] != tokenizer.cls_token_id or probe[-1] != tokenizer.sep_token_id:
        return "the post-processor does not wrap a text as [CLS] text [SEP]"
    return ""


def tokenizer_settings(tokenizer, seq_len: int, vocab_file: Path | None) -> dict[str, Any]:
    """Everything an app-side tokenizer needs to reproduce `tokenizer` at `seq_len`."""
    spec = _backend_spec(tokenizer)
    reason = _unsupported_reason(tokenizer, spec)
    norm = (spec or {}).get("normalizer") or {}
    model = (spec or {}).get("model") or {}
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    lowercase = bool(norm.get("lowercase", init.get("do_lower_case", False)))
    strip = norm.get("strip_accents", init.get("strip_accents"))
    names = ("unk_token", "cls_token", "sep_token", "pad_token", "mask_token")
    special = {n: str(getattr(tokenizer, n)) for n in names if getattr(tokenizer, n, None) is not None}
    settings: dict[str, Any] = {
        "app_tokenizer_supported": not reason,
        "app_tokenizer_reason": reason,
        "class": type(tokenizer).__name__,
        "type": model.get("type", "?"),
        "do_lower_case": lowercase,
        # Hugging Face: strip_accents None means "follow lowercase"; written here already resolved.
        "strip_accents": lowercase if strip is None else bool(strip),
        "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", init.get("tokenize_chinese_chars", True))),
        "clean_text": bool(norm.get("clean_text", True)),
        "special_tokens": special,
        "special_token_ids": {tok: int(tokenizer.convert_tokens_to_ids(tok)) for tok in special.values()},
        "added_tokens": [t["content"] for t in (spec or {}).get("added_tokens") or []],
        "continuing_subword_prefix": model.get("continuing_subword_prefix", "##"),
        "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100)),
        "max_length": int(seq_len),
        "padding": "max_length",
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "truncation": True,
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "vocab_size": int(len(tokenizer)),
    }
    if vocab_file is not None and vocab_file.is_file():
        settings["vocab_file"] = "tokenizer/" + vocab_file.name
        settings["vocab_sha256"] = _sha256(vocab_file)
    elif not reason:
        settings["app_tokenizer_supported"] = False
        settings["app_tokenizer_reason"] = "the bundle's tokenizer/ has no vocab.txt"
    return settings


def _check_vocab_file(vocab_file: Path, tokenizer) -> None:
    """The vocab.txt an app ships must list exactly the tokenizer's vocabulary, one token per line, in id order."""
    lines = vocab_file.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [tok for tok, _ in by_id] != lines or [i for _, i in by_id] != list(range(len(lines))):
        raise UserError(
            f"{vocab_file} does not list the tokenizer's {len(vocab)} tokens in id order; "
            "re-save the tokenizer with save_pretrained() so the app-side vocabulary matches"
        )


# --------------------------------------------------------------------------------------------
# Test vectors
# --------------------------------------------------------------------------------------------


def build_test_vectors(teacher, seq_len: int, vocab_file: Path | None = None, cases: list[tuple[str, str]] | None = None) -> dict:
    """Tokenizer settings + every case tokenized exactly as `Teacher.tokenize` does at `seq_len`."""
    cases = categorized_cases() if cases is None else cases
    texts = [text for _, text in cases]
    enc = teacher.tokenize(texts, seq_len)
    settings = tokenizer_settings(teacher.tokenizer, seq_len, vocab_file)
    settings["input_names"] = list(teacher.input_names)
    rows = []
    for i, (category, text) in enumerate(cases):
        ids = enc["input_ids"][i]
        row: dict[str, Any] = {
            "id": i,
            "category": category,
            "text": text,
            "tokens": teacher.tokenizer.convert_ids_to_tokens(ids[: int(enc["attention_mask"][i].sum())].tolist()),
            "input_ids": ids.tolist(),
            "attention_mask": enc["attention_mask"][i].tolist(),
        }
        if "token_type_ids" in enc:
            row["token_type_ids"] = enc["token_type_ids"][i].tolist()
        rows.append(row)
    truncated = int((enc["attention_mask"].sum(axis=1) >= seq_len).sum())
    unk = settings["special_tokens"].get("unk_token")
    unk_id = settings["special_token_ids"].get(unk, -1)
    return {
        "format": VECTORS_FORMAT,
        "version": VECTORS_VERSION,
        "description": (
            "Ids the teacher's Hugging Face tokenizer produces for each text (padding='max_length', truncation=True, "
            "max_length=tokenizer.max_length). An app-side tokenizer must reproduce every case exactly."
        ),
        "tokenizer": settings,
        "summary": {
            "cases": len(rows),
            "truncated": truncated,
            "with_unk": int(np.any(enc["input_ids"] == unk_id, axis=1).sum()),
            "categories": sorted({c for c, _ in cases}),
        },
        "cases": rows,
    }


def _dump_vectors(data: dict) -> str:
    """JSON with one case per line: small enough to diff, easy for minimal parsers (pure ASCII)."""
    head = {k: v for k, v in data.items() if k != "cases"}
    body = ",\n".join("    " + json.dumps(row, ensure_ascii=True) for row in data["cases"])
    text = json.dumps(head, indent=2, ensure_ascii=True)
    return text[:-2] + ',\n  "cases": [\n' + body + "\n  ]\n}\n"


# --------------------------------------------------------------------------------------------
# INTEGRATION.md
# --------------------------------------------------------------------------------------------

_TEMPLATE = r"""# Integrating {{ model_name }} in an app

Generated by edgekit {{ edgekit_version }} for this bundle{% if device %} (device profile `{{ device }}`){% endif %}.
Task: **{{ task }}**; every artifact takes token ids for **one text padded/truncated to {{ seq_len }} tokens**
and returns `{{ output_name }}`.

## Artifacts

{% for a in artifacts -%}
### `{{ a.path }}` ({{ a.format }}, {{ a.precision }})

Runtime: {{ runtimes[a.format] }}.

| | name | dtype | shape |
| --- | --- | --- | --- |
{% for t in a.inputs -%}
| input | `{{ t.name }}` | {{ t.dtype }} | `{{ t.shape }}` |
{% endfor -%}
{% for t in a.outputs -%}
| output | `{{ t.name }}` | {{ t.dtype }} | `{{ t.shape }}` |
{% endfor %}
{% endfor -%}
{% if not artifacts %}(no artifacts in this bundle)

{% endif -%}
Shapes are `[batch, sequence]`; `-1` marks a dynamic axis. Feed exactly the names above.
{%- if "token_type_ids" in input_names %} `token_type_ids` is all zeros for a single text.{% endif %}

## Pre-processing: tokenization

{% if tok.app_tokenizer_supported -%}
BERT WordPiece (`{{ tok["class"] }}`), configured as:

| setting | value |
| --- | --- |
| clean text (drop control chars, map whitespace to space) | {{ tok.clean_text | lower }} |
| split CJK ideographs into single characters | {{ tok.tokenize_chinese_chars | lower }} |
| strip accents (NFD, drop non-spacing marks) | {{ tok.strip_accents | lower }} |
| lower-case | {{ tok.do_lower_case | lower }} |
| continuation prefix | `{{ tok.continuing_subword_prefix }}` |
| longest word (chars) before it becomes `{{ tok.special_tokens.unk_token }}` | {{ tok.max_input_chars_per_word }} |
| special tokens | {% for t, i in tok.special_token_ids.items() %}`{{ t }}`={{ i }}{% if not loop.last %}, {% endif %}{% endfor %} |
| tokens matched verbatim in the text | {% for t in tok.added_tokens %}`{{ t }}`{% if not loop.last %}, {% endif %}{% endfor %} |
| sequence | {{ sequence_text }} |
| attention mask | 1 for `[CLS]`, the pieces and `[SEP]`; 0 for padding |

Files of `tokenizer/` to ship: **`vocab.txt`** (one token per line, id = line number; sha256
`{{ tok.vocab_sha256 }}`) is all the sample tokenizers (`samples/android`, `samples/ios`) read; their
settings are the constructor arguments in the snippets below. Ship `tokenizer.json` (+ `tokenizer_config.json`,
`special_tokens_map.json`) instead if you use a Hugging Face-compatible tokenizer library (tokenizers bindings,
swift-transformers, onnxruntime-extensions).
{%- else -%}
The sample WordPiece tokenizers cannot reproduce this tokenizer ({{ tok.app_tokenizer_reason }}). Ship
`tokenizer/tokenizer.json` and use a Hugging Face-compatible tokenizer library (tokenizers bindings,
swift-transformers, onnxruntime-extensions), padding/truncating to {{ seq_len }} tokens on the right.
{%- endif %}

**Prove it on your side**: `{{ vectors_file }}` holds {{ n_vectors }} texts (accents, CJK, emoji, punctuation runs,
URLs, long words, control characters, the empty string, texts longer than {{ seq_len }} tokens, ...) with the
exact ids the Python tokenizer produces. Run your tokenizer over all of them in a unit test; every case must match.
{%- if tok.app_tokenizer_supported %}
The Kotlin sample does this with `TokenizerParity.kt`, the Swift sample with `swift test`.
{%- endif %}

## Post-processing

{% if task == "embedding" -%}
`{{ output_name }}` is one vector per text, **already {{ pooling_text }}** inside the graph: do not pool or
normalise again.
{%- if normalized %} Similarity of two texts is the dot product of their embeddings (= cosine similarity).
{%- else %} Compare two texts with cosine similarity (normalise the vectors first).{% endif %}
{%- else -%}
`{{ output_name }}` is one row of raw scores per text. Apply softmax for probabilities; the class is the argmax,
its name is in `{{ labels_file }}`:

| id | label |
| --- | --- |
{%- for i, l in labels.items() %}
| {{ i }} | {{ l }} |
{%- endfor %}
{%- endif %}
{%- if has_exit_layer %}

The graph has early exit: the extra output `exit_layer` says which layer produced the result (for logging; the
main output is final as it is).
{%- endif %}

{%- if not tok.app_tokenizer_supported %}

> The snippets below use the sample WordPiece tokenizer; this bundle needs a tokenizer that reproduces
> `tokenizer/tokenizer.json` instead (see "Pre-processing").
{%- endif %}

## Android (Kotlin, LiteRT)
{% if tflite %}
Gradle: `implementation("com.google.ai.edge.litert:litert:1.4.1")` (or `org.tensorflow:tensorflow-lite:2.16.1`),
plus the `tokenizer` module of `samples/android`. Copy `{{ tflite.path }}` and `tokenizer/vocab.txt` into
`app/src/main/assets/`, and keep `.tflite` uncompressed (`androidResources { noCompress += "tflite" }`).

```kotlin
val tokenizer = WordPieceTokenizer(
    WordPieceTokenizer.loadVocab(assets.open("vocab.txt")),
    TokenizerConfig({{ kotlin_config }})
)
val model = EdgekitModel.fromAsset(context, "{{ tflite.path }}", threads = {{ threads }})
val enc = tokenizer.encode(text)                 // IntArrays of length {{ seq_len }}
// Signature "serving_default": {{ signature_text(tflite) }}
val out: FloatArray = model.run(enc)             // {{ output_name }} {{ tflite.outputs[0].shape }}
```

`EdgekitModel` (in `samples/android/edgekit`) is a thin wrapper over
`Interpreter.runSignature(mapOf({{ kotlin_inputs(tflite, "arrayOf") }}), mapOf("{{ output_name }}" to out), "serving_default")`
with `out = arrayOf(FloatArray({{ tflite.outputs[0].shape[-1] }}))`.
{%- else %}
This bundle has no `.tflite` artifact; export with `--formats tflite` for LiteRT on Android.
{%- endif %}

## iOS (Swift, Core ML)
{% if coreml %}
Add `samples/ios` as a Swift package; add `{{ coreml.path }}` and `tokenizer/vocab.txt` to the app target
(Xcode compiles the `.mlpackage` to `.mlmodelc`). Deployment target: {{ deployment_target or "as the profile says" }}.

```swift
let tokenizer = try WordPieceTokenizer(
    vocabURL: Bundle.main.url(forResource: "vocab", withExtension: "txt")!,
    config: TokenizerConfig({{ swift_config }})
)
let model = try EdgekitCoreMLModel(
    compiledModelURL: Bundle.main.url(forResource: "{{ coreml.path | replace(".mlpackage", "") }}", withExtension: "mlmodelc")!,
    computeUnits: .{{ compute_units }}
)
let enc = tokenizer.encode(text)                 // [Int32] of length {{ seq_len }}
let out: [Float] = try model.predict(enc)        // {{ output_name }} {{ coreml.outputs[0].shape }}
```

Inputs are `MLMultiArray`s of Int32 shaped {{ coreml.inputs[0].shape }} named {{ names_text(coreml) }}.
{%- else %}
This bundle has no `.mlpackage` artifact; export with `--formats coreml` (e.g. `--device iphone13`) for Core ML.
{%- endif %}

## ONNX Runtime mobile
{% if onnx %}
Android: `implementation("com.microsoft.onnxruntime:onnxruntime-android:1.20.0")`; iOS: pod `onnxruntime-objc`.
Use the full package (the graph contains `com.microsoft` fused ops such as Attention), not the minimal build.
Inputs are **int64**, shapes `{{ onnx.inputs[0].shape }}`.

```kotlin
val env = OrtEnvironment.getEnvironment()
val session = env.createSession(assets.open("{{ onnx.path }}").readBytes(), OrtSession.SessionOptions())
val enc = tokenizer.encode(text)
fun tensor(v: IntArray) = OnnxTensor.createTensor(env, arrayOf(LongArray(v.size) { v[it].toLong() }))
val inputs = mapOf({{ kotlin_inputs(onnx, "tensor") }})
session.run(inputs).use { result ->
    val out = (result.get("{{ output_name }}").get().value as Array<FloatArray>)[0]
}
```

```swift
// pod 'onnxruntime-objc'
let env = try ORTEnv(loggingLevel: .warning)
let session = try ORTSession(env: env, modelPath: Bundle.main.path(forResource: "{{ onnx.path | replace(".onnx", "") }}", ofType: "onnx")!,
                             sessionOptions: nil)
func tensor(_ v: [Int32]) throws -> ORTValue {
    let data = NSMutableData(data: v.map { Int64($0) }.withUnsafeBufferPointer { Data(buffer: $0) })
    return try ORTValue(tensorData: data, elementType: .int64, shape: [1, NSNumber(value: v.count)])
}
let enc = tokenizer.encode(text)
let result = try session.run(withInputs: [{{ swift_ort_inputs }}],
                             outputNames: ["{{ output_name }}"], runOptions: nil)
let out = try result["{{ output_name }}"]!.tensorData()   // Float32 values
```
{%- else %}
This bundle has no `.onnx` artifact; export with `--formats onnx` for ONNX Runtime.
{%- endif %}
"""

_RUNTIMES = {
    "tflite": "LiteRT / TensorFlow Lite interpreter, builtin ops only (no Flex delegate), signature `serving_default`",
    "coreml": "Core ML (ML program); inputs are MLMultiArray Int32",
    "onnx": "ONNX Runtime (full build: the graph uses com.microsoft fused ops)",
}
_KOTLIN_FIELDS = {"input_ids": "inputIds", "attention_mask": "attentionMask", "token_type_ids": "tokenTypeIds"}


def _kotlin_bool(value: bool) -> str:
    return "true" if value else "false"


def _config_args(tok: dict[str, Any], lang: str) -> str:
    sep = " = " if lang == "kotlin" else ": "
    args = [
        ("doLowerCase", _kotlin_bool(tok["do_lower_case"])),
        ("stripAccents", _kotlin_bool(tok["strip_accents"])),
        ("tokenizeChineseChars", _kotlin_bool(tok["tokenize_chinese_chars"])),
        ("maxLength", str(tok["max_length"])),
    ]
    return ", ".join(f"{k}{sep}{v}" for k, v in args)


def _compute_units(profile) -> str:
    """Core ML compute units from the profile: the Neural Engine when the device has one for Core ML."""
    if profile is None:
        return "all"
    kinds = {a.kind for a in getattr(profile, "accelerators", []) or [] if "coreml" in (a.runtimes or [])}
    if "npu" in kinds:
        return "all"
    return "cpuAndGPU" if "gpu" in kinds else "cpuOnly"


def render_integration_md(
    teacher,
    seq_len: int,
    artifacts: list[dict],
    vectors: dict,
    *,
    profile=None,
) -> str:
    import jinja2

    import edgekit

    tok = vectors["tokenizer"]
    by_format: dict[str, dict] = {}
    for art in artifacts:
        by_format.setdefault(art["format"], art)
    outputs = {o["name"] for a in artifacts for o in a.get("outputs", [])}
    pooling = teacher.pooling
    pooling_text = ""
    if pooling is not None:
        pooling_text = {"mean": "mean-pooled over the attention mask", "cls": "the [CLS] state", "max": "max-pooled"}[pooling.mode]
        if pooling.normalize:
            pooling_text += " and L2-normalised"
    onnx_inputs = [t["name"] for t in by_format["onnx"]["inputs"]] if "onnx" in by_format else []
    special = tok["special_tokens"]
    cls, sep, pad = special.get("cls_token", "[CLS]"), special.get("sep_token", "[SEP]"), special.get("pad_token", "[PAD]")
    pad_id = tok["special_token_ids"].get(pad, 0)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(_TEMPLATE).render(
        model_name=teacher.name,
        edgekit_version=edgekit.__version__,
        device=getattr(profile, "name", None),
        deployment_target=getattr(profile, "deployment_target", None),
        threads=getattr(profile, "threads", 4),
        task=teacher.task,
        seq_len=seq_len,
        output_name=teacher.output_name,
        input_names=list(teacher.input_names),
        artifacts=artifacts,
        runtimes=_RUNTIMES | {k: k for k in by_format if k not in _RUNTIMES},
        tok=tok,
        vectors_file=VECTORS_FILE,
        n_vectors=len(vectors["cases"]),
        pooling_text=pooling_text,
        normalized=bool(pooling and pooling.normalize),
        labels={int(k): v for k, v in sorted(teacher.labels.items())},
        labels_file=LABELS_FILE,
        has_exit_layer="exit_layer" in outputs,
        tflite=by_format.get("tflite"),
        coreml=by_format.get("coreml"),
        onnx=by_format.get("onnx"),
        kotlin_config=_config_args(tok, "kotlin"),
        swift_config=_config_args(tok, "swift"),
        sequence_text=(f"`{cls}` + pieces (truncated to {seq_len - 2}) + `{sep}`, right-padded with `{pad}`={pad_id} to {seq_len}"),
        signature_text=lambda art: ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in art["inputs"]),
        names_text=lambda art: ", ".join(f"`{t['name']}`" for t in art["inputs"]),
        swift_ort_inputs=", ".join(f'"{n}": tensor(enc.{_KOTLIN_FIELDS.get(n, n)})' for n in onnx_inputs),
        kotlin_inputs=lambda art, wrap: ", ".join(
            f'"{t["name"]}" to {wrap}(enc.{_KOTLIN_FIELDS.get(t["name"], t["name"])})' for t in art["inputs"]
        ),
        compute_units=_compute_units(profile),
    )


# --------------------------------------------------------------------------------------------
# The bundle step
# --------------------------------------------------------------------------------------------


def write_app_assets(bundle_dir: Path, teacher, seq_len: int, artifacts: list[dict], *, profile=None) -> list[Path]:
    """Write tokenizer_test_vectors.json, labels.json (classifiers) and INTEGRATION.md into `bundle_dir`.

    Call it after the tokenizer was saved to `bundle_dir/tokenizer` (it is saved here when missing) and
    before the manifest's file inventory, so the new files are hashed with the rest. Returns the paths written.
    """
    bundle_dir = Path(bundle_dir)
    tok_dir = bundle_dir / "tokenizer"
    if not tok_dir.is_dir():
        teacher.tokenizer.save_pretrained(tok_dir)
    vocab_file = tok_dir / "vocab.txt"
    if vocab_file.is_file():
        _check_vocab_file(vocab_file, teacher.tokenizer)
    vectors = build_test_vectors(teacher, seq_len, vocab_file if vocab_file.is_file() else None)
    written = []
    path = bundle_dir / VECTORS_FILE
    path.write_text(_dump_vectors(vectors), encoding="utf-8")
    written.append(path)
    if teacher.task == "classification":
        path = bundle_dir / LABELS_FILE
        labels = {str(k): v for k, v in sorted(teacher.labels.items())}
        path.write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    path = bundle_dir / INTEGRATION_FILE
    path.write_text(render_integration_md(teacher, seq_len, artifacts, vectors, profile=profile), encoding="utf-8")
    written.append(path)
    return written


def check_app_assets(bundle_dir: Path) -> dict:
    """Refuse (UserError, one line) a bundle whose app-side tokenizer assets are missing or altered.

    Returns the parsed test vectors when the vocabulary is the one they were generated with.
    """
    bundle_dir = Path(bundle_dir)
    vectors_file = bundle_dir / VECTORS_FILE
    if not vectors_file.is_file():
        raise UserError(f"{vectors_file} is missing; re-export the bundle with this edgekit version")
    try:
        vectors = json.loads(vectors_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{vectors_file} is not valid JSON ({exc.__class__.__name__}); re-export the bundle") from exc
    if vectors.get("format") != VECTORS_FORMAT or not isinstance(vectors.get("tokenizer"), dict):
        raise UserError(f"{vectors_file} is not an edgekit tokenizer test-vector file; re-export the bundle")
    settings = vectors["tokenizer"]
    vocab_rel = settings.get("vocab_file")
    if vocab_rel is None:
        return vectors  # not a WordPiece vocabulary: nothing an app ships as vocab.txt
    vocab_file = bundle_dir / vocab_rel
    if not vocab_file.is_file():
        raise UserError(f"{vocab_file} is missing from the bundle; the app tokenizer needs it: re-export the bundle")
    actual = _sha256(vocab_file)
    if actual != settings.get("vocab_sha256"):
        raise UserError(
            f"{vocab_file} was altered (sha256 {actual[:12]}..., the test vectors were made with "
            f"{str(settings.get('vocab_sha256'))[:12]}...); restore the bundle's vocabulary or re-export"
        )
    return vectors


# --------------------------------------------------------------------------------------------
# Unicode tables for the sample tokenizers, generated from the tokenizers library itself
# --------------------------------------------------------------------------------------------

_TABLE_DOCS = {
    "CONTROL": "Code points removed by clean text (control, format, private use; not tab/newline/carriage return)",
    "NONSPACING_MARK": "Code points dropped after NFD when accents are stripped",
    "PUNCTUATION": "Code points split off as a word of their own by the pre-tokenizer",
    "CHINESE": "Code points surrounded by spaces when CJK characters are split",
    "LOWERCASE": (
        "Lower-casing as (start, end, stride, delta) runs: cp in a run, at a multiple of stride from start, becomes "
        "cp + delta. U+0130 (the only one-to-many mapping) becomes U+0069 U+0307 in code"
    ),
}
#: The one code point whose lower case is two code points (SpecialCasing.txt); handled in the tokenizers' code.
_MULTI_LOWERCASE = {0x130: "i\u0307"}


def _ranges(values: list[int]) -> list[tuple[int, ...]]:
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return [tuple(r) for r in out]


def _lowercase_runs(mapping: dict[int, int]) -> list[tuple[int, ...]]:
    """(start, end, stride, delta) runs of code points that lower-case with the same delta (upper/lower pairs alternate)."""
    runs: list[list[int]] = []
    for cp in sorted(mapping):
        delta = mapping[cp] - cp
        if runs:
            start, end, stride, last_delta = runs[-1]
            if last_delta == delta and ((stride == 0 and cp - end in (1, 2)) or (stride and cp - end == stride)):
                runs[-1] = [start, cp, cp - end, delta]
                continue
        runs.append([cp, cp, 0, delta])
    return [(start, end, stride or 1, delta) for start, end, stride, delta in runs]


def unicode_tables() -> dict[str, list[tuple[int, ...]]]:
    """Each character class (and the lower-case mapping) exactly as the installed `tokenizers` (Rust) applies it.

    Found by running its BertNormalizer / BertPreTokenizer on every code point (~6 s).
    """
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    clean = BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    strip = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False)
    chinese = BertNormalizer(clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    lower = BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=True)
    pre = BertPreTokenizer()
    sets: dict[str, list[int]] = {k: [] for k in _TABLE_DOCS if k != "LOWERCASE"}
    lowercase: dict[int, int] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        cleaned = clean.normalize_str(ch)
        if cleaned == "":
            sets["CONTROL"].append(cp)
        if strip.normalize_str(ch) == "":
            sets["NONSPACING_MARK"].append(cp)
        if chinese.normalize_str(ch) == f" {ch} ":
            sets["CHINESE"].append(cp)
        if ch != " " and cleaned != " " and len(pre.pre_tokenize_str(f"a{ch}b")) == 3:
            sets["PUNCTUATION"].append(cp)
        low = lower.normalize_str(ch)
        if low != ch:
            if len(low) == 1:
                lowercase[cp] = ord(low)
            elif _MULTI_LOWERCASE.get(cp) != low:
                raise RuntimeError(f"U+{cp:04X} lower-cases to {low!r}: teach the sample tokenizers this one-to-many mapping")
    tables: dict[str, list[tuple[int, ...]]] = {k: _ranges(v) for k, v in sets.items()}
    tables["LOWERCASE"] = _lowercase_runs(lowercase)
    return tables


def _hex(v: int) -> str:
    return f"-0x{-v:X}" if v < 0 else f"0x{v:X}"


def render_unicode_tables(tables: dict[str, list[tuple[int, ...]]], lang: str, tokenizers_version: str) -> str:
    """Kotlin or Swift source of `tables` (sorted runs, looked up by binary search)."""
    header = (
        f"// GENERATED by `python -m edgekit.integration --write-unicode-tables` from tokenizers {tokenizers_version}.\n"
        "// Character classes and lower-casing exactly as the Hugging Face (Rust) BERT tokenizer applies them: it uses\n"
        "// its own Unicode tables, which differ from a phone's (every OS version ships another Unicode version).\n"
        "// Do not edit by hand.\n"
    )
    blocks = []
    for name, rows in tables.items():
        flat = [_hex(v) for row in rows for v in row]
        lines = [", ".join(flat[i : i + 12]) for i in range(0, len(flat), 12)]
        body = ",\n        ".join(lines)
        doc = _TABLE_DOCS[name]
        if lang == "kotlin":
            blocks.append(f"    /** {doc}. */\n    val {name}: IntArray = intArrayOf(\n        {body}\n    )\n")
        else:
            camel = "".join(w if i == 0 else w.capitalize() for i, w in enumerate(name.lower().split("_")))
            camel = "lowercaseRuns" if name == "LOWERCASE" else camel
            kind = "[Int]" if name == "LOWERCASE" else "[UInt32]"
            blocks.append(f"    /// {doc}.\n    static let {camel}: {kind} = [\n        {body}\n    ]\n")
    if lang == "kotlin":
        lookup = """    /** True when [cp] lies in one of the [start, end] pairs of [table]. */
    fun contains(table: IntArray, cp: Int): Boolean {
        var lo = 0
        var hi = table.size / 2 - 1
        while (lo <= hi) {
            val mid = (lo + hi) / 2
            if (cp < table[2 * mid]) hi = mid - 1 else if (cp > table[2 * mid + 1]) lo = mid + 1 else return true
        }
        return false
    }

    /** The lower case of [cp] (one code point; U+0130 is handled by the caller). */
    fun lowercase(cp: Int): Int {
        var lo = 0
        var hi = LOWERCASE.size / 4 - 1
        while (lo <= hi) {
            val mid = (lo + hi) / 2
            if (cp < LOWERCASE[4 * mid]) {
                hi = mid - 1
            } else if (cp > LOWERCASE[4 * mid + 1]) {
                lo = mid + 1
            } else {
                return if ((cp - LOWERCASE[4 * mid]) % LOWERCASE[4 * mid + 2] == 0) cp + LOWERCASE[4 * mid + 3] else cp
            }
        }
        return cp
    }
"""
        return header + "package edgekit.tokenizer\n\nobject UnicodeTables {\n" + "\n".join(blocks) + "\n" + lookup + "}\n"
    lookup = """    /// True when `cp` lies in one of the [start, end] pairs of `table`.
    static func contains(_ table: [UInt32], _ cp: UInt32) -> Bool {
        var lo = 0
        var hi = table.count / 2 - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            if cp < table[2 * mid] { hi = mid - 1 } else if cp > table[2 * mid + 1] { lo = mid + 1 } else { return true }
        }
        return false
    }

    /// The lower case of `cp` (one code point; U+0130 is handled by the caller).
    static func lowercase(_ cp: UInt32) -> UInt32 {
        let c = Int(cp)
        var lo = 0
        var hi = lowercaseRuns.count / 4 - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            if c < lowercaseRuns[4 * mid] {
                hi = mid - 1
            } else if c > lowercaseRuns[4 * mid + 1] {
                lo = mid + 1
            } else {
                return (c - lowercaseRuns[4 * mid]) % lowercaseRuns[4 * mid + 2] == 0 ? UInt32(c + lowercaseRuns[4 * mid + 3]) : cp
            }
        }
        return cp
    }
"""
    return header + "\nenum UnicodeTables {\n" + "\n".join(blocks) + "\n" + lookup + "}\n"


def write_unicode_tables() -> list[Path]:
    import tokenizers

    tables = unicode_tables()
    out = []
    for path, lang in ((KOTLIN_TABLES, "kotlin"), (SWIFT_TABLES, "swift")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_unicode_tables(tables, lang, tokenizers.__version__), encoding="utf-8")
        out.append(path)
    return out


if __name__ == "__main__":  # pragma: no cover - developer tool
    import sys

    if sys.argv[1:] != ["--write-unicode-tables"]:
        sys.exit("usage: python -m edgekit.integration --write-unicode-tables")
    for written in write_unicode_tables():
        print(f"wrote {written}")
