// WordPiece tokenizer in plain Kotlin (no Android dependency), mirroring the Hugging Face *fast*
// BERT tokenizer (tokenizers: BertNormalizer + BertPreTokenizer + WordPiece + TemplateProcessing),
// which is what edgekit uses to tokenize the teacher's inputs. Kept compatible with Kotlin 1.3
// (Debian's kotlinc), so no lowercase()/uppercase()/buildList and friends.
//
// The Swift port in samples/ios/Sources/EdgekitTokenizer/WordPieceTokenizer.swift follows this
// file function by function: change both together.
package edgekit.tokenizer

import java.io.File
import java.io.InputStream
import java.security.MessageDigest
import java.text.Normalizer

/** Tokenizer settings; edgekit writes the values of a bundle into tokenizer_test_vectors.json ("tokenizer"). */
class TokenizerConfig(
    val doLowerCase: Boolean = true,
    /** null: follow doLowerCase, as Hugging Face does. */
    val stripAccents: Boolean? = null,
    val tokenizeChineseChars: Boolean = true,
    val cleanText: Boolean = true,
    val unkToken: String = "[UNK]",
    val clsToken: String = "[CLS]",
    val sepToken: String = "[SEP]",
    val padToken: String = "[PAD]",
    /** Tokens matched verbatim in the raw text before normalisation (the tokenizer's added tokens). */
    val addedTokens: List<String> = listOf("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    val continuingSubwordPrefix: String = "##",
    val maxInputCharsPerWord: Int = 100,
    /** The bundle's static sequence length: every encoding is truncated and padded to it. */
    val maxLength: Int = 128
)

/** Model inputs for one text, each exactly maxLength long. */
class Encoding(val inputIds: IntArray, val attentionMask: IntArray, val tokenTypeIds: IntArray, val tokens: List<String>)

class TokenizerException(message: String) : Exception(message)

class WordPieceTokenizer(val vocab: Map<String, Int>, val config: TokenizerConfig = TokenizerConfig()) {
    private val stripAccents: Boolean = config.stripAccents ?: config.doLowerCase
    private val unkId: Int = idOf(config.unkToken)
    private val clsId: Int = idOf(config.clsToken)
    private val sepId: Int = idOf(config.sepToken)
    private val padId: Int = idOf(config.padToken)
    // Longest first, so that "[MASK]" wins over a shorter token that is its prefix.
    private val addedTokens: List<IntArray> = config.addedTokens
        .filter { it.isNotEmpty() && vocab.containsKey(it) }
        .sortedByDescending { it.codePointCount(0, it.length) }
        .map { it.codePoints().toArray() }

    private fun idOf(token: String): Int =
        vocab[token] ?: throw TokenizerException("special token $token is not in the vocabulary; is this the bundle's vocab.txt?")

    /** Ids, attention mask and token type ids for one text, truncated and padded to [maxLength]. */
    fun encode(text: String, maxLength: Int = config.maxLength): Encoding {
        val pieces = tokenize(text)
        val keep = Math.max(0, Math.min(pieces.size, maxLength - 2))
        val tokens = ArrayList<String>()
        val ids = IntArray(maxLength) { padId }
        val mask = IntArray(maxLength)
        var n = 0
        if (n < maxLength) { ids[n] = clsId; mask[n] = 1; tokens.add(config.clsToken); n += 1 }
        for (i in 0 until keep) { ids[n] = pieces[i].second; mask[n] = 1; tokens.add(pieces[i].first); n += 1 }
        if (n < maxLength) { ids[n] = sepId; mask[n] = 1; tokens.add(config.sepToken); n += 1 }
        return Encoding(ids, mask, IntArray(maxLength), tokens)
    }

    /** (token, id) pairs of the text, without special tokens, truncation or padding. */
    fun tokenize(text: String): List<Pair<String, Int>> {
        val out = ArrayList<Pair<String, Int>>()
        for (segment in splitOnAddedTokens(text.codePoints().toArray())) {
            if (segment.second) {
                val token = String(segment.first, 0, segment.first.size)
                out.add(Pair(token, vocab.getValue(token)))
                continue
            }
            for (word in splitWords(normalize(segment.first))) {
                wordPiece(word, out)
            }
        }
        return out
    }

    // Added tokens (e.g. [MASK]) are matched in the raw text, leftmost and longest first.
    private fun splitOnAddedTokens(cps: IntArray): List<Pair<IntArray, Boolean>> {
        val out = ArrayList<Pair<IntArray, Boolean>>()
        var start = 0
        var i = 0
        while (i < cps.size) {
            var matched: IntArray? = null
            for (token in addedTokens) {
                if (regionMatches(cps, i, token)) { matched = token; break }
            }
            if (matched == null) { i += 1; continue }
            if (i > start) out.add(Pair(cps.copyOfRange(start, i), false))
            out.add(Pair(matched, true))
            i += matched.size
            start = i
        }
        if (start < cps.size) out.add(Pair(cps.copyOfRange(start, cps.size), false))
        return out
    }

    private fun regionMatches(cps: IntArray, at: Int, token: IntArray): Boolean {
        if (at + token.size > cps.size) return false
        for (k in token.indices) {
            if (cps[at + k] != token[k]) return false
        }
        return true
    }

    // BertNormalizer: clean text, pad CJK ideographs with spaces, strip accents (NFD, drop Mn), lower-case.
    private fun normalize(input: IntArray): IntArray {
        var cps = input
        if (config.cleanText) {
            val out = IntArrayBuilder(cps.size)
            for (cp in cps) {
                if (cp == 0 || cp == 0xFFFD || isControl(cp)) continue
                out.add(if (isWhitespace(cp)) 0x20 else cp)
            }
            cps = out.toArray()
        }
        if (config.tokenizeChineseChars) {
            val out = IntArrayBuilder(cps.size)
            for (cp in cps) {
                if (isChineseChar(cp)) { out.add(0x20); out.add(cp); out.add(0x20) } else out.add(cp)
            }
            cps = out.toArray()
        }
        if (stripAccents) {
            val nfd = Normalizer.normalize(String(cps, 0, cps.size), Normalizer.Form.NFD).codePoints().toArray()
            val out = IntArrayBuilder(nfd.size)
            for (cp in nfd) {
                if (!isNonSpacingMark(cp)) out.add(cp)
            }
            cps = out.toArray()
        }
        if (config.doLowerCase) {
            val out = IntArrayBuilder(cps.size)
            for (cp in cps) {
                // Each code point on its own, without context (Rust's char::to_lowercase); U+0130 is the one
                // code point whose lower case is two: i + combining dot above.
                if (cp == 0x130) { out.add(0x69); out.add(0x307) } else out.add(UnicodeTables.lowercase(cp))
            }
            cps = out.toArray()
        }
        return cps
    }

    // BertPreTokenizer: split on whitespace (dropped) and on punctuation (each mark is its own word).
    private fun splitWords(cps: IntArray): List<IntArray> {
        val words = ArrayList<IntArray>()
        var start = 0
        for (i in cps.indices) {
            val cp = cps[i]
            if (isWhitespace(cp) || isPunctuation(cp)) {
                if (i > start) words.add(cps.copyOfRange(start, i))
                if (isPunctuation(cp)) words.add(intArrayOf(cp))
                start = i + 1
            }
        }
        if (start < cps.size) words.add(cps.copyOfRange(start, cps.size))
        return words
    }

    // WordPiece: greedy longest match from the left; continuation pieces carry the "##" prefix.
    private fun wordPiece(word: IntArray, out: MutableList<Pair<String, Int>>) {
        if (word.size > config.maxInputCharsPerWord) {
            out.add(Pair(config.unkToken, unkId))
            return
        }
        val pieces = ArrayList<Pair<String, Int>>()
        var start = 0
        while (start < word.size) {
            var end = word.size
            var found: Pair<String, Int>? = null
            while (start < end) {
                var piece = String(word, start, end - start)
                if (start > 0) piece = config.continuingSubwordPrefix + piece
                val id = vocab[piece]
                if (id != null) { found = Pair(piece, id); break }
                end -= 1
            }
            if (found == null) {
                out.add(Pair(config.unkToken, unkId))
                return
            }
            pieces.add(found)
            start = end
        }
        out.addAll(pieces)
    }

    companion object {
        /** Reads vocab.txt: one token per line, the id is the line number (0-based). */
        fun loadVocab(file: File): Map<String, Int> {
            if (!file.isFile) throw TokenizerException("vocabulary ${file.path} is missing; copy tokenizer/vocab.txt from the edgekit bundle")
            return parseVocab(file.readText(Charsets.UTF_8))
        }

        /** Reads vocab.txt from a stream (e.g. Android's assets.open("vocab.txt")) and closes it. */
        fun loadVocab(stream: InputStream): Map<String, Int> = parseVocab(stream.use { it.readBytes().toString(Charsets.UTF_8) })

        fun parseVocab(text: String): Map<String, Int> {
            val vocab = HashMap<String, Int>()
            val lines = text.split("\n")
            // A final newline leaves one empty string after the last token: it is not a token.
            val count = if (lines.isNotEmpty() && lines[lines.size - 1].length == 0) lines.size - 1 else lines.size
            for (id in 0 until count) {
                vocab[lines[id].trimEnd('\r')] = id
            }
            return vocab
        }

        fun sha256(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256").digest(file.readBytes())
            val sb = StringBuilder()
            for (b in digest) sb.append(String.format("%02x", b.toInt() and 0xff))
            return sb.toString()
        }

        // Character classes and lower-casing come from UnicodeTables (generated from the Hugging Face tokenizer itself),
        // not from java.lang.Character: the Rust tokenizer has its own Unicode tables, and every phone has other ones.
        // Only NFD (java.text.Normalizer) is the platform's: canonical decompositions never change once assigned.

        /** Removed by clean text: control (except tab, newline, carriage return), format and private-use characters. */
        fun isControl(cp: Int): Boolean = UnicodeTables.contains(UnicodeTables.CONTROL, cp)

        /** Unicode White_Space (Rust's char::is_whitespace): tab, newline, NBSP, the ideographic space, ... */
        fun isWhitespace(cp: Int): Boolean {
            return (cp in 0x09..0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
                (cp in 0x2000..0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000
        }

        /** ASCII punctuation (including $+<=>^`|~, which Unicode files as symbols) or a Unicode punctuation mark. */
        fun isPunctuation(cp: Int): Boolean = UnicodeTables.contains(UnicodeTables.PUNCTUATION, cp)

        /** A non-spacing mark (Mn), dropped after NFD when accents are stripped. */
        fun isNonSpacingMark(cp: Int): Boolean = UnicodeTables.contains(UnicodeTables.NONSPACING_MARK, cp)

        /** The CJK ideograph blocks BERT splits into single characters (not kana, not Hangul). */
        fun isChineseChar(cp: Int): Boolean = UnicodeTables.contains(UnicodeTables.CHINESE, cp)
    }
}

/** A growable IntArray (Kotlin 1.3 has no IntArray builder). */
class IntArrayBuilder(capacity: Int) {
    private var data = IntArray(Math.max(4, capacity))
    private var size = 0

    fun add(value: Int) {
        if (size == data.size) data = data.copyOf(data.size * 2)
        data[size] = value
        size += 1
    }

    fun toArray(): IntArray = data.copyOf(size)
}
