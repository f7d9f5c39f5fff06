// swift-tools-version:5.7
// edgekit iOS sample: a WordPiece tokenizer (a line-for-line port of samples/android/tokenizer) and a
// Core ML wrapper for an edgekit bundle's .mlpackage, with XCTest parity tests against the bundle's
// tokenizer_test_vectors.json. Not built by edgekit's CI (no Swift toolchain there): see samples/README.md.
import PackageDescription

let package = Package(
    name: "EdgekitSample",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [
        .library(name: "EdgekitTokenizer", targets: ["EdgekitTokenizer"]),
        .library(name: "EdgekitCoreML", targets: ["EdgekitCoreML"]),
    ],
    targets: [
        .target(name: "EdgekitTokenizer"),
        .target(name: "EdgekitCoreML", dependencies: ["EdgekitTokenizer"]),
        .testTarget(name: "EdgekitTokenizerTests", dependencies: ["EdgekitTokenizer"]),
    ]
)
