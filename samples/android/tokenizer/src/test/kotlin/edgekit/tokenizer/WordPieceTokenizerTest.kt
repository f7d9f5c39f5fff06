package edgekit.tokenizer

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assume.assumeTrue
import org.junit.Test
import java.io.File

class WordPieceTokenizerTest {
    private val tokens = listOf("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "un", "##aff", "##able", ",", "!", "cafe", "中", "文")
    private val tokenizer = WordPieceTokenizer(tokens.withIndex().associate { it.value to it.index }, TokenizerConfig(maxLength = 12))

    private fun pieces(text: String): List<String> = tokenizer.tokenize(text).map { it.first }

    @Test
    fun basicTokenizationLowerCasesStripsAccentsAndSplitsPunctuation() {
        assertEquals(listOf("hello", ",", "world", "!"), pieces("Hello,\tWORLD!"))
        assertEquals(listOf("cafe"), pieces("Café"))
        assertEquals(listOf("中", "文"), pieces("中文"))
    }

    @Test
    fun wordPieceUsesContinuationPrefixAndUnknownForUnmatchedWords() {
        assertEquals(listOf("un", "##aff", "##able"), pieces("unaffable"))
        assertEquals(listOf("[UNK]"), pieces("unaffxable"))
        assertEquals(listOf("[UNK]"), pieces("a".repeat(101)))
    }

    @Test
    fun specialTokensInTheTextAreKeptAndControlCharactersDropped() {
        assertEquals(listOf("hello", "[MASK]", "world"), pieces("hello[MASK]world"))
        assertEquals(listOf("helloworld").size, pieces("hello\u200Bworld").size)
    }

    @Test
    fun encodeAddsClsSepTruncatesAndPads() {
        val enc = tokenizer.encode("hello world")
        assertArrayEquals(intArrayOf(2, 5, 6, 3, 0, 0, 0, 0, 0, 0, 0, 0), enc.inputIds)
        assertArrayEquals(intArrayOf(1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), enc.attentionMask)
        val long = tokenizer.encode("hello ".repeat(20))
        assertEquals(2, long.inputIds[0])
        assertEquals(3, long.inputIds[11])
        assertEquals(12, long.attentionMask.sum())
    }

    /** The bundle's test vectors: every case must give the Hugging Face ids (skipped when no bundle is configured). */
    @Test
    fun bundleTestVectorsMatchHuggingFace() {
        val bundle = File(System.getProperty("edgekit.bundle") ?: "../../out/pixel4")
        val vectorsFile = File(bundle, "tokenizer_test_vectors.json")
        assumeTrue("no bundle at $bundle (set -PedgekitBundle=...)", vectorsFile.isFile)
        val root = MiniJson.parse(vectorsFile.readText()) as Map<*, *>
        val bundleTokenizer = WordPieceTokenizer(
            WordPieceTokenizer.loadVocab(File(bundle, "tokenizer/vocab.txt")),
            tokenizerConfigFrom(root["tokenizer"] as Map<*, *>)
        )
        val failures = ArrayList<String>()
        for (raw in root["cases"] as List<*>) {
            val case = raw as Map<*, *>
            val want = (case["input_ids"] as List<*>).map { (it as Long).toInt() }.toIntArray()
            val got = bundleTokenizer.encode(case["text"] as String).inputIds
            if (!want.contentEquals(got)) failures.add("case ${case["id"]}: ${case["text"]}")
        }
        assertEquals("mismatches: ${failures.take(5)}", 0, failures.size)
    }
}
