// A small JSON reader (objects, arrays, strings with \u escapes, numbers, true/false/null) so that the
// tokenizer and its parity runner need nothing beyond the Kotlin standard library.
package edgekit.tokenizer

class JsonException(message: String) : Exception(message)

/** Parses JSON text into Map<String, Any?>, List<Any?>, String, Long/Double, Boolean or null. */
class MiniJson private constructor(private val text: String) {
    private var pos = 0

    companion object {
        fun parse(text: String): Any? {
            val parser = MiniJson(text)
            parser.skipSpace()
            val value = parser.readValue()
            parser.skipSpace()
            if (parser.pos != text.length) throw JsonException("unexpected trailing data at offset ${parser.pos}")
            return value
        }
    }

    private fun fail(what: String): Nothing = throw JsonException("$what at offset $pos")

    private fun skipSpace() {
        while (pos < text.length && (text[pos] == ' ' || text[pos] == '\n' || text[pos] == '\r' || text[pos] == '\t')) pos += 1
    }

    private fun expect(c: Char) {
        if (pos >= text.length || text[pos] != c) fail("expected '$c'")
        pos += 1
    }

    private fun readValue(): Any? {
        if (pos >= text.length) fail("unexpected end of input")
        val c = text[pos]
        return when {
            c == '{' -> readObject()
            c == '[' -> readArray()
            c == '"' -> readString()
            c == 't' -> readWord("true", true)
            c == 'f' -> readWord("false", false)
            c == 'n' -> readWord("null", null)
            c == '-' || (c in '0'..'9') -> readNumber()
            else -> fail("unexpected character '$c'")
        }
    }

    private fun readWord(word: String, value: Any?): Any? {
        if (!text.startsWith(word, pos)) fail("expected $word")
        pos += word.length
        return value
    }

    private fun readObject(): Map<String, Any?> {
        val out = LinkedHashMap<String, Any?>()
        expect('{')
        skipSpace()
        if (pos < text.length && text[pos] == '}') { pos += 1; return out }
        while (true) {
            skipSpace()
            val key = readString()
            skipSpace()
            expect(':')
            skipSpace()
            out[key] = readValue()
            skipSpace()
            if (pos < text.length && text[pos] == ',') { pos += 1; continue }
            expect('}')
            return out
        }
    }

    private fun readArray(): List<Any?> {
        val out = ArrayList<Any?>()
        expect('[')
        skipSpace()
        if (pos < text.length && text[pos] == ']') { pos += 1; return out }
        while (true) {
            skipSpace()
            out.add(readValue())
            skipSpace()
            if (pos < text.length && text[pos] == ',') { pos += 1; continue }
            expect(']')
            return out
        }
    }

    private fun readString(): String {
        expect('"')
        val sb = StringBuilder()
        while (true) {
            if (pos >= text.length) fail("unterminated string")
            val c = text[pos]
            pos += 1
            if (c == '"') return sb.toString()
            if (c != '\\') { sb.append(c); continue }
            if (pos >= text.length) fail("unterminated escape")
            val e = text[pos]
            pos += 1
            when (e) {
                '"' -> sb.append('"')
                '\\' -> sb.append('\\')
                '/' -> sb.append('/')
                'b' -> sb.append('\b')
                'f' -> sb.append('\u000C')
                'n' -> sb.append('\n')
                'r' -> sb.append('\r')
                't' -> sb.append('\t')
                // UTF-16 code unit; a surrogate pair arrives as two escapes and is joined by the StringBuilder.
                'u' -> {
                    if (pos + 4 > text.length) fail("short \\u escape")
                    sb.append(text.substring(pos, pos + 4).toInt(16).toChar())
                    pos += 4
                }
                else -> fail("bad escape \\$e")
            }
        }
    }

    private fun readNumber(): Any {
        val start = pos
        if (text[pos] == '-') pos += 1
        while (pos < text.length && (text[pos] in '0'..'9' || text[pos] == '.' || text[pos] == 'e' || text[pos] == 'E' ||
                text[pos] == '+' || text[pos] == '-')) pos += 1
        val raw = text.substring(start, pos)
        val isInteger = raw.indexOf('.') < 0 && raw.indexOf('e') < 0 && raw.indexOf('E') < 0
        return if (isInteger) raw.toLong() else raw.toDouble()
    }
}
