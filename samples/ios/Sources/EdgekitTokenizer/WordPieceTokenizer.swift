// WordPiece tokenizer mirroring the Hugging Face *fast* BERT tokenizer (BertNormalizer + BertPreTokenizer +
// WordPiece + [CLS]/[SEP] template), which edgekit uses for the teacher's inputs.
//
// A line-for-line port of samples/android/tokenizer/src/main/kotlin/edgekit/tokenizer/WordPieceTokenizer.kt:
// change both together. Two Swift-specific points:
// - text is handled as arrays of Unicode scalars (UInt32), never as Characters (grapheme clusters);
// - the vocabulary is keyed by scalar arrays, not String: Swift's String equality is canonical equivalence
//   ("é" == "e\u{301}"), which would find vocabulary entries the Hugging Face tokenizer does not.
import Foundation

/// Tokenizer settings; edgekit writes the values of a bundle into tokenizer_test_vectors.json ("tokenizer").
public struct TokenizerConfig {
    public var doLowerCase: Bool
    /// nil: follow doLowerCase, as Hugging Face does.
    public var stripAccents: Bool?
    public var tokenizeChineseChars: Bool
    public var cleanText: Bool
    public var unkToken: String
    public var clsToken: String
    public var sepToken: String
    public var padToken: String
    /// Tokens matched verbatim in the raw text before normalisation (the tokenizer's added tokens).
    public var addedTokens: [String]
    public var continuingSubwordPrefix: String
    public var maxInputCharsPerWord: Int
    /// The bundle's static sequence length: every encoding is truncated and padded to it.
    public var maxLength: Int

    public init(
        doLowerCase: Bool = true,
        stripAccents: Bool? = nil,
        tokenizeChineseChars: Bool = true,
        cleanText: Bool = true,
        unkToken: String = "[UNK]",
        clsToken: String = "[CLS]",
        sepToken: String = "[SEP]",
        padToken: String = "[PAD]",
        addedTokens: [String] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        continuingSubwordPrefix: String = "##",
        maxInputCharsPerWord: Int = 100,
        maxLength: Int = 128
    ) {
        self.doLowerCase = doLowerCase
        self.stripAccents = stripAccents
        self.tokenizeChineseChars = tokenizeChineseChars
        self.cleanText = cleanText
        self.unkToken = unkToken
        self.clsToken = clsToken
        self.sepToken = sepToken
        self.padToken = padToken
        self.addedTokens = addedTokens
        self.continuingSubwordPrefix = continuingSubwordPrefix
        self.maxInputCharsPerWord = maxInputCharsPerWord
        self.maxLength = maxLength
    }
}

/// Model inputs for one text, each exactly maxLength long.
public struct Encoding {
    public let inputIds: [Int32]
    public let attentionMask: [Int32]
    public let tokenTypeIds: [Int32]
    public let tokens: [String]
}

public struct TokenizerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

typealias Scalars = [UInt32]

func scalars(_ text: String) -> Scalars { text.unicodeScalars.map { $0.value } }

func string(_ cps: ArraySlice<UInt32>) -> String {
    var view = String.UnicodeScalarView()
    for cp in cps { if let s = Unicode.Scalar(cp) { view.append(s) } }
    return String(view)
}

public final class WordPieceTokenizer {
    let vocab: [Scalars: Int]
    public let config: TokenizerConfig
    private let stripAccents: Bool
    private let unkId: Int
    private let clsId: Int
    private let sepId: Int
    private let padId: Int
    // Longest first, so that "[MASK]" wins over a shorter token that is its prefix.
    private let addedTokens: [Scalars]

    init(vocab: [Scalars: Int], config: TokenizerConfig = TokenizerConfig()) throws {
        self.vocab = vocab
        self.config = config
        self.stripAccents = config.stripAccents ?? config.doLowerCase
        self.unkId = try WordPieceTokenizer.idOf(config.unkToken, vocab)
        self.clsId = try WordPieceTokenizer.idOf(config.clsToken, vocab)
        self.sepId = try WordPieceTokenizer.idOf(config.sepToken, vocab)
        self.padId = try WordPieceTokenizer.idOf(config.padToken, vocab)
        self.addedTokens = config.addedTokens
            .map { scalars($0) }
            .filter { !$0.isEmpty && vocab[$0] != nil }
            .sorted { $0.count > $1.count }
    }

    private static func idOf(_ token: String, _ vocab: [Scalars: Int]) throws -> Int {
        guard let id = vocab[scalars(token)] else {
            throw TokenizerError("special token \(token) is not in the vocabulary; is this the bundle's vocab.txt?")
        }
        return id
    }

    /// Reads vocab.txt (one token per line, the id is the line number) from `vocabURL`.
    public convenience init(vocabURL: URL, config: TokenizerConfig = TokenizerConfig()) throws {
        guard let data = try? Data(contentsOf: vocabURL) else {
            throw TokenizerError("vocabulary \(vocabURL.path) is missing; copy tokenizer/vocab.txt from the edgekit bundle")
        }
        try self.init(vocab: WordPieceTokenizer.parseVocab(String(decoding: data, as: UTF8.self)), config: config)
    }

    /// Ids, attention mask and token type ids for one text, truncated and padded to maxLength.
    public func encode(_ text: String, maxLength: Int? = nil) -> Encoding {
        let maxLength = maxLength ?? config.maxLength
        let pieces = tokenize(text)
        let keep = max(0, min(pieces.count, maxLength - 2))
        var tokens: [String] = []
        var ids = [Int32](repeating: Int32(padId), count: maxLength)
        var mask = [Int32](repeating: 0, count: maxLength)
        var n = 0
        if n < maxLength { ids[n] = Int32(clsId); mask[n] = 1; tokens.append(config.clsToken); n += 1 }
        for i in 0..<keep { ids[n] = Int32(pieces[i].1); mask[n] = 1; tokens.append(pieces[i].0); n += 1 }
        if n < maxLength { ids[n] = Int32(sepId); mask[n] = 1; tokens.append(config.sepToken); n += 1 }
        return Encoding(inputIds: ids, attentionMask: mask, tokenTypeIds: [Int32](repeating: 0, count: maxLength), tokens: tokens)
    }

    /// (token, id) pairs of the text, without special tokens, truncation or padding.
    public func tokenize(_ text: String) -> [(String, Int)] {
        var out: [(String, Int)] = []
        for segment in splitOnAddedTokens(scalars(text)) {
            if segment.1 {
                out.append((string(segment.0[...]), vocab[segment.0]!))
                continue
            }
            for word in splitWords(normalize(segment.0)) {
                wordPiece(word, &out)
            }
        }
        return out
    }

    // Added tokens (e.g. [MASK]) are matched in the raw text, leftmost and longest first.
    private func splitOnAddedTokens(_ cps: Scalars) -> [(Scalars, Bool)] {
        var out: [(Scalars, Bool)] = []
        var start = 0
        var i = 0
        while i < cps.count {
            var matched: Scalars? = nil
            for token in addedTokens {
                if regionMatches(cps, i, token) { matched = token; break }
            }
            guard let token = matched else { i += 1; continue }
            if i > start { out.append((Array(cps[start..<i]), false)) }
            out.append((token, true))
            i += token.count
            start = i
        }
        if start < cps.count { out.append((Array(cps[start..<cps.count]), false)) }
        return out
    }

    private func regionMatches(_ cps: Scalars, _ at: Int, _ token: Scalars) -> Bool {
        if at + token.count > cps.count { return false }
        for k in 0..<token.count {
            if cps[at + k] != token[k] { return false }
        }
        return true
    }

    // BertNormalizer: clean text, pad CJK ideographs with spaces, strip accents (NFD, drop Mn), lower-case.
    private func normalize(_ input: Scalars) -> Scalars {
        var cps = input
        if config.cleanText {
            var out: Scalars = []
            out.reserveCapacity(cps.count)
            for cp in cps {
                if cp == 0 || cp == 0xFFFD || WordPieceTokenizer.isControl(cp) { continue }
                out.append(WordPieceTokenizer.isWhitespace(cp) ? 0x20 : cp)
            }
            cps = out
        }
        if config.tokenizeChineseChars {
            var out: Scalars = []
            out.reserveCapacity(cps.count)
            for cp in cps {
                if WordPieceTokenizer.isChineseChar(cp) { out.append(0x20); out.append(cp); out.append(0x20) } else { out.append(cp) }
            }
            cps = out
        }
        if stripAccents {
            let nfd = scalars(string(cps[...]).decomposedStringWithCanonicalMapping)
            var out: Scalars = []
            out.reserveCapacity(nfd.count)
            for cp in nfd {
                if !WordPieceTokenizer.isNonSpacingMark(cp) { out.append(cp) }
            }
            cps = out
        }
        if config.doLowerCase {
            var out: Scalars = []
            out.reserveCapacity(cps.count)
            for cp in cps {
                // Each code point on its own, without context (Rust's char::to_lowercase); U+0130 is the one
                // code point whose lower case is two: i + combining dot above.
                if cp == 0x130 { out.append(0x69); out.append(0x307) } else { out.append(UnicodeTables.lowercase(cp)) }
            }
            cps = out
        }
        return cps
    }

    // BertPreTokenizer: split on whitespace (dropped) and on punctuation (each mark is its own word).
    private func splitWords(_ cps: Scalars) -> [Scalars] {
        var words: [Scalars] = []
        var start = 0
        for i in 0..<cps.count {
            let cp = cps[i]
            if WordPieceTokenizer.isWhitespace(cp) || WordPieceTokenizer.isPunctuation(cp) {
                if i > start { words.append(Array(cps[start..<i])) }
                if WordPieceTokenizer.isPunctuation(cp) { words.append([cp]) }
                start = i + 1
            }
        }
        if start < cps.count { words.append(Array(cps[start..<cps.count])) }
        return words
    }

    // WordPiece: greedy longest match from the left; continuation pieces carry the "##" prefix.
    private func wordPiece(_ word: Scalars, _ out: inout [(String, Int)]) {
        if word.count > config.maxInputCharsPerWord {
            out.append((config.unkToken, unkId))
            return
        }
        let prefix = scalars(config.continuingSubwordPrefix)
        var pieces: [(String, Int)] = []
        var start = 0
        while start < word.count {
            var end = word.count
            var found: (String, Int)? = nil
            while start < end {
                var piece = Array(word[start..<end])
                if start > 0 { piece = prefix + piece }
                if let id = vocab[piece] { found = (string(piece[...]), id); break }
                end -= 1
            }
            guard let match = found else {
                out.append((config.unkToken, unkId))
                return
            }
            pieces.append(match)
            start = end
        }
        out.append(contentsOf: pieces)
    }

    /// Parses vocab.txt: one token per line, the id is the line number (0-based).
    static func parseVocab(_ text: String) -> [Scalars: Int] {
        var vocab: [Scalars: Int] = [:]
        // Split on U+000A scalars: as Characters, "\r\n" would be one grapheme and never match "\n".
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { $0.map { $0.value } }
        // A final newline leaves one empty line after the last token: it is not a token.
        if let last = lines.last, last.isEmpty { lines.removeLast() }
        for (id, line) in lines.enumerated() {
            var token = line
            while let last = token.last, last == 0x0D { token.removeLast() }
            vocab[token] = id
        }
        return vocab
    }

    // Character classes and lower-casing come from UnicodeTables (generated from the Hugging Face tokenizer itself),
    // not from Unicode.Scalar.Properties: the Rust tokenizer has its own Unicode tables, and every iOS version has
    // other ones. Only NFD (Foundation) is the platform's: canonical decompositions never change once assigned.

    /// Removed by clean text: control (except tab, newline, carriage return), format and private-use characters.
    static func isControl(_ cp: UInt32) -> Bool { UnicodeTables.contains(UnicodeTables.control, cp) }

    /// Unicode White_Space (Rust's char::is_whitespace): tab, newline, NBSP, the ideographic space, ...
    static func isWhitespace(_ cp: UInt32) -> Bool {
        return (0x09...0x0D).contains(cp) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
            (0x2000...0x200A).contains(cp) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000
    }

    /// ASCII punctuation (including $+<=>^`|~, which Unicode files as symbols) or a Unicode punctuation mark.
    static func isPunctuation(_ cp: UInt32) -> Bool { UnicodeTables.contains(UnicodeTables.punctuation, cp) }

    /// A non-spacing mark (Mn), dropped after NFD when accents are stripped.
    static func isNonSpacingMark(_ cp: UInt32) -> Bool { UnicodeTables.contains(UnicodeTables.nonspacingMark, cp) }

    /// The CJK ideograph blocks BERT splits into single characters (not kana, not Hangul).
    static func isChineseChar(_ cp: UInt32) -> Bool { UnicodeTables.contains(UnicodeTables.chinese, cp) }
}
