// Reading an edgekit bundle's tokenizer_test_vectors.json: the tokenizer settings of the bundle and the
// ids the Hugging Face tokenizer produced for each case. The Swift counterpart of TokenizerParity.kt.
import Foundation

public struct TokenizerTestVectors: Decodable {
    public struct Settings: Decodable {
        public let appTokenizerSupported: Bool?
        public let appTokenizerReason: String?
        public let doLowerCase: Bool
        public let stripAccents: Bool?
        public let tokenizeChineseChars: Bool
        public let cleanText: Bool?
        public let specialTokens: [String: String]
        public let addedTokens: [String]?
        public let continuingSubwordPrefix: String?
        public let maxInputCharsPerWord: Int?
        public let maxLength: Int
        public let vocabSha256: String?
    }

    public struct Case: Decodable {
        public let id: Int
        public let category: String
        public let text: String
        public let inputIds: [Int32]
        public let attentionMask: [Int32]
        public let tokenTypeIds: [Int32]?
    }

    public let tokenizer: Settings
    public let cases: [Case]

    public static func load(_ url: URL) throws -> TokenizerTestVectors {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(TokenizerTestVectors.self, from: Data(contentsOf: url))
    }

    /// The TokenizerConfig that reproduces this bundle's Hugging Face tokenizer.
    public var config: TokenizerConfig {
        let s = tokenizer
        // convertFromSnakeCase also rewrites dictionary keys ("unk_token" -> "unkToken"): accept both spellings.
        func special(_ snake: String, _ camel: String) -> String? { s.specialTokens[snake] ?? s.specialTokens[camel] }
        return TokenizerConfig(
            doLowerCase: s.doLowerCase,
            stripAccents: s.stripAccents,
            tokenizeChineseChars: s.tokenizeChineseChars,
            cleanText: s.cleanText ?? true,
            unkToken: special("unk_token", "unkToken") ?? "[UNK]",
            clsToken: special("cls_token", "clsToken") ?? "[CLS]",
            sepToken: special("sep_token", "sepToken") ?? "[SEP]",
            padToken: special("pad_token", "padToken") ?? "[PAD]",
            addedTokens: s.addedTokens ?? ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            continuingSubwordPrefix: s.continuingSubwordPrefix ?? "##",
            maxInputCharsPerWord: s.maxInputCharsPerWord ?? 100,
            maxLength: s.maxLength
        )
    }

    /// Cases whose ids, mask or token type ids differ from `tokenizer`'s output (empty: full parity).
    public func mismatches(_ tokenizer: WordPieceTokenizer) -> [Case] {
        return cases.filter { c in
            let enc = tokenizer.encode(c.text)
            return enc.inputIds != c.inputIds || enc.attentionMask != c.attentionMask ||
                (c.tokenTypeIds != nil && enc.tokenTypeIds != c.tokenTypeIds!)
        }
    }
}
