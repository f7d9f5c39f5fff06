// An edgekit .mlpackage in Core ML: predict(encoding) returns the bundle's one output (`embedding`: already
// pooled and, for sentence-transformers models, L2-normalised; or `logits`). Inputs are MLMultiArray Int32
// [1, seq_len] named input_ids, attention_mask (and token_type_ids for sentence-pair classifiers).
import CoreML
import EdgekitTokenizer
import Foundation

public enum EdgekitModelError: Error, CustomStringConvertible {
    case badModel(String)
    case badInput(String)

    public var description: String {
        switch self {
        case .badModel(let m), .badInput(let m): return m
        }
    }
}

public final class EdgekitCoreMLModel {
    public let model: MLModel
    public let inputNames: [String]
    public let outputName: String
    /// Static sequence length of the artifact: the tokenizer's maxLength must equal it.
    public let seqLen: Int

    /// `compiledModelURL`: the `.mlmodelc` Xcode builds from the bundle's `.mlpackage` (or `compile(packageURL:)`).
    /// `computeUnits`: `.all` lets Core ML use the Neural Engine (edgekit's INTEGRATION.md names the profile's choice).
    public init(compiledModelURL: URL, computeUnits: MLComputeUnits = .all) throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        model = try MLModel(contentsOf: compiledModelURL, configuration: configuration)
        let description = model.modelDescription
        inputNames = description.inputDescriptionsByName.keys.sorted()
        let outputs = description.outputDescriptionsByName.keys.sorted()
        guard let output = outputs.first(where: { $0 == "embedding" || $0 == "logits" }) ?? outputs.first else {
            throw EdgekitModelError.badModel("the model has no outputs; re-export it with edgekit")
        }
        outputName = output
        guard let first = inputNames.first,
              let shape = description.inputDescriptionsByName[first]?.multiArrayConstraint?.shape,
              let last = shape.last else {
            throw EdgekitModelError.badModel("the model inputs are not multi-arrays; re-export it with edgekit")
        }
        seqLen = last.intValue
    }

    /// Compiles an `.mlpackage` at run time (e.g. one downloaded after install) to a temporary `.mlmodelc`.
    public static func compile(packageURL: URL) throws -> URL {
        return try MLModel.compileModel(at: packageURL)
    }

    /// Runs one tokenized text; returns the embedding or the logits.
    public func predict(_ encoding: Encoding) throws -> [Float] {
        guard encoding.inputIds.count == seqLen else {
            throw EdgekitModelError.badInput(
                "the tokenizer produced \(encoding.inputIds.count) ids but the model takes \(seqLen); set TokenizerConfig(maxLength: \(seqLen))")
        }
        var features: [String: MLFeatureValue] = [:]
        for name in inputNames {
            let values: [Int32]
            switch name {
            case "input_ids": values = encoding.inputIds
            case "attention_mask": values = encoding.attentionMask
            case "token_type_ids": values = encoding.tokenTypeIds
            default: throw EdgekitModelError.badModel("unexpected model input '\(name)'")
            }
            let array = try MLMultiArray(shape: [1, NSNumber(value: seqLen)], dataType: .int32)
            let pointer = array.dataPointer.bindMemory(to: Int32.self, capacity: seqLen)
            for i in 0..<seqLen { pointer[i] = values[i] }
            features[name] = MLFeatureValue(multiArray: array)
        }
        let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
        guard let out = result.featureValue(for: outputName)?.multiArrayValue else {
            throw EdgekitModelError.badModel("the model returned no '\(outputName)'")
        }
        return (0..<out.count).map { out[$0].floatValue }
    }

    /// Dot product: the cosine similarity of two L2-normalised embeddings.
    public static func dot(_ a: [Float], _ b: [Float]) -> Float {
        return zip(a, b).reduce(0) { $0 + $1.0 * $1.1 }
    }

    public static func softmax(_ logits: [Float]) -> [Float] {
        guard let maxValue = logits.max() else { return logits }
        let exps = logits.map { Float(exp(Double($0 - maxValue))) }
        let sum = exps.reduce(0, +)
        return exps.map { $0 / sum }
    }
}
