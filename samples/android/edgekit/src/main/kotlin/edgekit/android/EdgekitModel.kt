package edgekit.android

import android.content.Context
import edgekit.tokenizer.Encoding
import edgekit.tokenizer.MiniJson
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.Closeable
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.channels.FileChannel

/**
 * An edgekit `.tflite` artifact in the LiteRT interpreter: `run(encoding)` returns the one output of the
 * bundle (`embedding`: already pooled and, for sentence-transformers models, L2-normalised; or `logits`).
 *
 * Inputs are fed by name through the signature `serving_default` (input_ids, attention_mask and, for
 * sentence-pair classifiers, token_type_ids: int32 `[1, seq_len]`), as the bundle's INTEGRATION.md lists them.
 * Not thread-safe: use one instance per thread.
 */
class EdgekitModel(model: ByteBuffer, threads: Int = 4) : Closeable {
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))
    private val signature: String = interpreter.signatureKeys.let { keys ->
        if (keys.contains(SIGNATURE)) SIGNATURE else keys.firstOrNull()
            ?: throw IllegalArgumentException("the model has no signature; re-export it with edgekit")
    }
    val inputNames: List<String> = interpreter.getSignatureInputs(signature).toList()
    val outputName: String = interpreter.getSignatureOutputs(signature).let { outs ->
        outs.firstOrNull { it == "embedding" || it == "logits" } ?: outs.first()
    }
    /** Static sequence length of the artifact: the tokenizer's maxLength must equal it. */
    val seqLen: Int = interpreter.getInputTensorFromSignature(inputNames.first(), signature).shape().last()
    val outputSize: Int = interpreter.getOutputTensorFromSignature(outputName, signature).shape().last()

    /** Runs one tokenized text; returns the embedding or the logits. */
    fun run(encoding: Encoding): FloatArray {
        require(encoding.inputIds.size == seqLen) {
            "the tokenizer produced ${encoding.inputIds.size} ids but the model takes $seqLen; set TokenizerConfig(maxLength = $seqLen)"
        }
        val inputs = HashMap<String, Any>()
        for (name in inputNames) {
            val values = when (name) {
                "input_ids" -> encoding.inputIds
                "attention_mask" -> encoding.attentionMask
                "token_type_ids" -> encoding.tokenTypeIds
                else -> throw IllegalArgumentException("unexpected model input '$name'")
            }
            val type = interpreter.getInputTensorFromSignature(name, signature).dataType()
            inputs[name] = if (type == DataType.INT64) arrayOf(LongArray(values.size) { values[it].toLong() }) else arrayOf(values)
        }
        val output = arrayOf(FloatArray(outputSize))
        interpreter.runSignature(inputs, mapOf<String, Any>(outputName to output), signature)
        return output[0]
    }

    override fun close() = interpreter.close()

    companion object {
        const val SIGNATURE = "serving_default"

        /** Memory-maps an asset (keep `.tflite` uncompressed: `androidResources { noCompress += "tflite" }`). */
        fun fromAsset(context: Context, assetName: String, threads: Int = 4): EdgekitModel {
            context.assets.openFd(assetName).use { fd ->
                FileInputStream(fd.fileDescriptor).use { stream ->
                    val buffer = stream.channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                    return EdgekitModel(buffer, threads)
                }
            }
        }

        /** Dot product: the cosine similarity of two L2-normalised embeddings. */
        fun dot(a: FloatArray, b: FloatArray): Float {
            var s = 0f
            for (i in a.indices) s += a[i] * b[i]
            return s
        }

        fun softmax(logits: FloatArray): FloatArray {
            if (logits.isEmpty()) return logits
            var max = logits[0]
            for (v in logits) if (v > max) max = v
            val exps = FloatArray(logits.size) { Math.exp((logits[it] - max).toDouble()).toFloat() }
            val sum = exps.sum()
            return FloatArray(exps.size) { exps[it] / sum }
        }

        /** labels.json of a classifier bundle: {"0": "negative", ...} -> index -> label. */
        fun loadLabels(json: String): Map<Int, String> =
            (MiniJson.parse(json) as Map<*, *>).entries.associate { (it.key as String).toInt() to it.value.toString() }
    }
}
