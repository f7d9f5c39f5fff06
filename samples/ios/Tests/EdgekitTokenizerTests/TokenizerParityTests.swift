// XCTest against an edgekit bundle's tokenizer_test_vectors.json: every case must give the Hugging Face ids.
// The bundle is $EDGEKIT_BUNDLE, or ../../out/pixel4 relative to samples/ios (run `edgekit export --device pixel4`).
import Foundation
import XCTest
@testable import EdgekitTokenizer
#if canImport(CryptoKit)
import CryptoKit
#endif

final class TokenizerParityTests: XCTestCase {
    private func bundleDir() -> URL {
        if let env = ProcessInfo.processInfo.environment["EDGEKIT_BUNDLE"] {
            return URL(fileURLWithPath: env)
        }
        // Tests/EdgekitTokenizerTests/<this file> -> samples/ios -> repository root
        let here = URL(fileURLWithPath: #filePath)
        return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("../../out/pixel4").standardizedFileURL
    }

    func testBundleVectorsMatchHuggingFace() throws {
        let bundle = bundleDir()
        let vectorsURL = bundle.appendingPathComponent("tokenizer_test_vectors.json")
        guard FileManager.default.fileExists(atPath: vectorsURL.path) else {
            throw XCTSkip("no bundle at \(bundle.path); set EDGEKIT_BUNDLE or run `edgekit export --device pixel4`")
        }
        let vectors = try TokenizerTestVectors.load(vectorsURL)
        XCTAssertNotEqual(vectors.tokenizer.appTokenizerSupported, false, vectors.tokenizer.appTokenizerReason ?? "")
        let vocabURL = bundle.appendingPathComponent("tokenizer/vocab.txt")
        #if canImport(CryptoKit)
        if let expected = vectors.tokenizer.vocabSha256 {
            let digest = SHA256.hash(data: try Data(contentsOf: vocabURL)).map { String(format: "%02x", $0) }.joined()
            XCTAssertEqual(digest, expected, "tokenizer/vocab.txt was altered: use the bundle's own vocabulary")
        }
        #endif
        let tokenizer = try WordPieceTokenizer(vocabURL: vocabURL, config: vectors.config)
        let failed = vectors.mismatches(tokenizer)
        for c in failed.prefix(10) {
            let enc = tokenizer.encode(c.text)
            print("MISMATCH case \(c.id) (\(c.category)): \(c.text.debugDescription)\n  expected \(c.inputIds.prefix(20))\n  swift    \(enc.inputIds.prefix(20)) \(enc.tokens)")
        }
        print("\(vectors.cases.count - failed.count) passed, \(failed.count) failed")
        XCTAssertEqual(failed.count, 0)
        XCTAssertGreaterThanOrEqual(vectors.cases.count, 200)
    }

    private let tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "un", "##aff", "##able", ",", "!", "cafe", "中", "文"]

    private func tiny() throws -> WordPieceTokenizer {
        var vocab: [[UInt32]: Int] = [:]
        for (i, t) in tokens.enumerated() { vocab[t.unicodeScalars.map { $0.value }] = i }
        return try WordPieceTokenizer(vocab: vocab, config: TokenizerConfig(maxLength: 12))
    }

    func testBasicTokenizationAndWordPiece() throws {
        let t = try tiny()
        XCTAssertEqual(t.tokenize("Hello,\tWORLD!").map { $0.0 }, ["hello", ",", "world", "!"])
        XCTAssertEqual(t.tokenize("Café").map { $0.0 }, ["cafe"])
        XCTAssertEqual(t.tokenize("中文").map { $0.0 }, ["中", "文"])
        XCTAssertEqual(t.tokenize("unaffable").map { $0.0 }, ["un", "##aff", "##able"])
        XCTAssertEqual(t.tokenize("unaffxable").map { $0.0 }, ["[UNK]"])
        XCTAssertEqual(t.tokenize("hello[MASK]world").map { $0.0 }, ["hello", "[MASK]", "world"])
    }

    func testEncodePadsAndTruncates() throws {
        let t = try tiny()
        XCTAssertEqual(t.encode("hello world").inputIds, [2, 5, 6, 3, 0, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(t.encode("hello world").attentionMask, [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
        let long = t.encode(String(repeating: "hello ", count: 20))
        XCTAssertEqual(long.inputIds.first, 2)
        XCTAssertEqual(long.inputIds.last, 3)
        XCTAssertEqual(long.attentionMask.reduce(0, +), 12)
    }
}
