// Parity runner: tokenizes every case of an edgekit bundle's tokenizer_test_vectors.json with the Kotlin
// WordPieceTokenizer and compares ids, attention mask and token type ids with what the Hugging Face
// tokenizer produced at export time.
//
//   kotlinc WordPieceTokenizer.kt MiniJson.kt TokenizerParity.kt -include-runtime -d parity.jar
//   java -cp parity.jar edgekit.tokenizer.TokenizerParityKt BUNDLE/tokenizer_test_vectors.json [BUNDLE/tokenizer/vocab.txt]
//
// Prints "N passed, M failed" (and the first mismatches); exit 0 when all match, 1 on a mismatch,
// 2 when the inputs are unusable (missing or altered vocab, unreadable vectors), with a one-line error.
package edgekit.tokenizer

import java.io.File
import kotlin.system.exitProcess

private const val SHOW_MISMATCHES = 10

/** The tokenizer settings edgekit writes under "tokenizer" in tokenizer_test_vectors.json. */
fun tokenizerConfigFrom(settings: Map<*, *>): TokenizerConfig {
    val special = settings["special_tokens"] as? Map<*, *> ?: emptyMap<String, Any?>()
    val added = (settings["added_tokens"] as? List<*>)?.map { it.toString() } ?: listOf("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    return TokenizerConfig(
        doLowerCase = settings["do_lower_case"] as? Boolean ?: true,
        stripAccents = settings["strip_accents"] as? Boolean,
        tokenizeChineseChars = settings["tokenize_chinese_chars"] as? Boolean ?: true,
        cleanText = settings["clean_text"] as? Boolean ?: true,
        unkToken = special["unk_token"] as? String ?: "[UNK]",
        clsToken = special["cls_token"] as? String ?: "[CLS]",
        sepToken = special["sep_token"] as? String ?: "[SEP]",
        padToken = special["pad_token"] as? String ?: "[PAD]",
        addedTokens = added,
        continuingSubwordPrefix = settings["continuing_subword_prefix"] as? String ?: "##",
        maxInputCharsPerWord = (settings["max_input_chars_per_word"] as? Long ?: 100L).toInt(),
        maxLength = (settings["max_length"] as? Long ?: 128L).toInt()
    )
}

private fun ints(value: Any?): IntArray? = (value as? List<*>)?.map { (it as Long).toInt() }?.toIntArray()

private fun show(values: IntArray): String {
    var end = values.size
    while (end > 1 && values[end - 1] == 0) end -= 1  // hide the padding tail
    return values.copyOf(end).joinToString(",", "[", if (end < values.size) ",0...]" else "]")
}

private fun escape(text: String): String {
    val sb = StringBuilder()
    for (c in text) {
        if (c < ' ' || c.toInt() == 0x7F) sb.append(String.format("\\u%04x", c.toInt())) else sb.append(c)
    }
    return if (sb.length > 120) sb.substring(0, 120) + "..." else sb.toString()
}

private fun die(message: String): Nothing {
    System.err.println("error: $message")
    exitProcess(2)
}

fun main(args: Array<String>) {
    if (args.isEmpty() || args.size > 2) die("usage: TokenizerParity tokenizer_test_vectors.json [vocab.txt]")
    val vectorsFile = File(args[0])
    if (!vectorsFile.isFile) die("${vectorsFile.path} is missing; export a bundle with edgekit (it writes tokenizer_test_vectors.json)")
    val root = try {
        MiniJson.parse(vectorsFile.readText(Charsets.UTF_8)) as? Map<*, *> ?: die("${vectorsFile.path} is not a JSON object")
    } catch (e: JsonException) {
        die("${vectorsFile.path} is not valid JSON (${e.message}); re-export the bundle")
    }
    val settings = root["tokenizer"] as? Map<*, *> ?: die("${vectorsFile.path} has no \"tokenizer\" settings; re-export the bundle")
    if (settings["app_tokenizer_supported"] == false) {
        die("this bundle's tokenizer is not WordPiece/BERT (${settings["app_tokenizer_reason"]}); the sample tokenizer cannot reproduce it")
    }
    val vocabFile = if (args.size == 2) File(args[1]) else File(vectorsFile.absoluteFile.parentFile, "tokenizer/vocab.txt")
    if (!vocabFile.isFile) die("vocabulary ${vocabFile.path} is missing; ship tokenizer/vocab.txt from the same bundle")
    val expectedSha = settings["vocab_sha256"] as? String
    val actualSha = WordPieceTokenizer.sha256(vocabFile)
    if (expectedSha != null && expectedSha != actualSha) {
        die("vocabulary ${vocabFile.path} was altered (sha256 $actualSha, the bundle says $expectedSha); use the bundle's own tokenizer/vocab.txt")
    }
    val tokenizer = try {
        WordPieceTokenizer(WordPieceTokenizer.loadVocab(vocabFile), tokenizerConfigFrom(settings))
    } catch (e: TokenizerException) {
        die(e.message ?: "cannot build the tokenizer")
    }
    val cases = root["cases"] as? List<*> ?: die("${vectorsFile.path} has no \"cases\"")
    var passed = 0
    var failed = 0
    val started = System.nanoTime()
    for ((index, raw) in cases.withIndex()) {
        val case = raw as Map<*, *>
        val text = case["text"] as String
        val encoding = tokenizer.encode(text)
        val wantIds = ints(case["input_ids"])
        val wantMask = ints(case["attention_mask"])
        val wantTypes = ints(case["token_type_ids"])
        val ok = wantIds != null && wantIds.contentEquals(encoding.inputIds) &&
            wantMask != null && wantMask.contentEquals(encoding.attentionMask) &&
            (wantTypes == null || wantTypes.contentEquals(encoding.tokenTypeIds))
        if (ok) {
            passed += 1
            continue
        }
        failed += 1
        if (failed <= SHOW_MISMATCHES) {
            println("MISMATCH case ${case["id"] ?: index} (${case["category"] ?: "?"}): \"${escape(text)}\"")
            println("  expected input_ids ${if (wantIds == null) "?" else show(wantIds)}")
            println("  kotlin   input_ids ${show(encoding.inputIds)}  tokens ${encoding.tokens}")
            if (wantMask != null && !wantMask.contentEquals(encoding.attentionMask)) println("  attention_mask differs")
        }
    }
    val ms = (System.nanoTime() - started) / 1000000
    println("$passed passed, $failed failed (${cases.size} vectors, max_length ${tokenizer.config.maxLength}, $ms ms)")
    exitProcess(if (failed == 0 && passed > 0) 0 else 1)
}
