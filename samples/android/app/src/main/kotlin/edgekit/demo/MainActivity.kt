package edgekit.demo

import android.app.Activity
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.view.inputmethod.EditorInfo
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import edgekit.android.EdgekitModel
import edgekit.tokenizer.MiniJson
import edgekit.tokenizer.WordPieceTokenizer
import edgekit.tokenizer.tokenizerConfigFrom
import java.util.concurrent.Executors

/**
 * Semantic search over a few sentences with an edgekit embedding bundle (or class probabilities with a
 * classifier bundle). On start it also re-checks the tokenizer against the bundle's test vectors, on the device.
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private val main = Handler(Looper.getMainLooper())
    private lateinit var tokenizer: WordPieceTokenizer
    private lateinit var model: EdgekitModel
    private var labels: Map<Int, String> = emptyMap()
    private var corpus: List<Pair<String, FloatArray>> = emptyList()

    private val sentences = listOf(
        "How do I reset my password?",
        "The app crashes when I open the camera.",
        "Where can I download my invoices?",
        "Cancel my subscription at the end of the month.",
        "Is there a dark mode?",
        "The battery drains quickly after the update.",
        "Can I share my account with family members?",
        "Change the language of the interface to French."
    )

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val query = EditText(this).apply {
            hint = "Ask something, e.g. I forgot my login"
            imeOptions = EditorInfo.IME_ACTION_SEARCH
            setSingleLine()
        }
        val button = Button(this).apply { text = "Search"; isEnabled = false }
        val status = TextView(this).apply { text = "loading model..." }
        val results = TextView(this).apply { textSize = 16f }
        val column = LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(32, 32, 32, 32)
            addView(query)
            addView(button)
            addView(status)
            addView(results)
        }
        setContentView(ScrollView(this).apply { addView(column) })

        worker.execute {
            val vectors = MiniJson.parse(assets.open("tokenizer_test_vectors.json").use { it.readBytes().toString(Charsets.UTF_8) }) as Map<*, *>
            tokenizer = WordPieceTokenizer(
                WordPieceTokenizer.loadVocab(assets.open("vocab.txt")),
                tokenizerConfigFrom(vectors["tokenizer"] as Map<*, *>)
            )
            model = EdgekitModel.fromAsset(this, BuildConfig.MODEL_ASSET, threads = 4)
            if (assets.list("")?.contains("labels.json") == true) {
                labels = EdgekitModel.loadLabels(assets.open("labels.json").use { it.readBytes().toString(Charsets.UTF_8) })
            }
            val parity = checkParity(vectors)
            if (model.outputName == "embedding") corpus = sentences.map { it to model.run(tokenizer.encode(it)) }
            main.post {
                status.text = "${BuildConfig.MODEL_ASSET}: ${model.outputName}[${model.outputSize}], seq ${model.seqLen}; tokenizer parity $parity"
                button.isEnabled = true
            }
        }
        val search = {
            val text = query.text.toString()
            worker.execute {
                val started = System.nanoTime()
                val out = model.run(tokenizer.encode(text))
                val ms = (System.nanoTime() - started) / 1e6
                val lines = if (model.outputName == "embedding") {
                    corpus.map { it.first to EdgekitModel.dot(out, it.second) }
                        .sortedByDescending { it.second }
                        .map { String.format("%.3f  %s", it.second, it.first) }
                } else {
                    EdgekitModel.softmax(out).withIndex().sortedByDescending { it.value }
                        .map { String.format("%.3f  %s", it.value, labels[it.index] ?: "class ${it.index}") }
                }
                main.post { results.text = (listOf(String.format("%.1f ms", ms)) + lines).joinToString("\n") }
            }
        }
        button.setOnClickListener { search() }
        query.setOnEditorActionListener { _, _, _ -> search(); true }
    }

    /** Tokenizes every case of the bundle's test vectors on the device; "307/307" means identical to Python. */
    private fun checkParity(vectors: Map<*, *>): String {
        val cases = vectors["cases"] as List<*>
        val passed = cases.count { raw ->
            val case = raw as Map<*, *>
            val want = (case["input_ids"] as List<*>).map { (it as Long).toInt() }.toIntArray()
            want.contentEquals(tokenizer.encode(case["text"] as String).inputIds)
        }
        return "$passed/${cases.size}"
    }

    override fun onDestroy() {
        worker.execute { if (::model.isInitialized) model.close() }
        worker.shutdown()
        super.onDestroy()
    }
}
