import Foundation
import Yams

/// A configuration error that names the file, line and key, for operators.
public struct ConfigError: Error, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var key: String?
    public var message: String

    public init(file: String, line: Int?, key: String?, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        var s = file
        if let l = line { s += ":\(l)" }
        if let k = key { s += ": \(k)" }
        return s + ": " + message
    }
}

/// Typed, line-aware reading of a YAML mapping (on top of Yams' composed nodes), so
/// every bad value is reported with its key and line, and unknown keys are refused.
public struct YAMLMap {
    public let file: String
    public let path: String
    let node: Node
    let mapping: Node.Mapping

    public static func parse(_ text: String, file: String) throws(ConfigError) -> YAMLMap {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let e as YamlError {
            throw ConfigError(file: file, line: Self.line(of: e), key: nil, message: "not valid YAML: \(Self.problem(of: e))")
        } catch {
            throw ConfigError(file: file, line: nil, key: nil, message: "not valid YAML: \(error)")
        }
        guard let root else { return YAMLMap(file: file, path: "", node: Node.mapping(.init([])), mapping: .init([])) }
        guard case .mapping(let m) = root else {
            throw ConfigError(file: file, line: root.mark?.line, key: nil, message: "the top level must be a mapping of keys")
        }
        return YAMLMap(file: file, path: "", node: root, mapping: m)
    }

    static func line(of e: YamlError) -> Int? {
        switch e {
        case .scanner(_, _, let m, _), .parser(_, _, let m, _), .composer(_, _, let m, _): return m.line
        default: return nil
        }
    }

    static func problem(of e: YamlError) -> String {
        switch e {
        case .scanner(_, let p, _, _), .parser(_, let p, _, _), .composer(_, let p, _, _): return p
        default: return "\(e)"
        }
    }

    public var line: Int? { node.mark?.line }

    func keyPath(_ k: String) -> String { path.isEmpty ? k : path + "." + k }

    public func error(_ key: String?, _ message: String) -> ConfigError {
        let line = key.flatMap { value($0)?.mark?.line } ?? self.line
        return ConfigError(file: file, line: line, key: key.map(keyPath) ?? (path.isEmpty ? nil : path), message: message)
    }

    func value(_ key: String) -> Node? { mapping[Node(key)] }

    public var keys: [String] { mapping.keys.compactMap(\.string) }

    /// Refuses keys this reader does not know (typos must not be silently ignored).
    public func allowOnly(_ allowed: Set<String>) throws(ConfigError) {
        for (k, _) in mapping {
            guard let name = k.string, allowed.contains(name) else {
                throw ConfigError(file: file, line: k.mark?.line, key: keyPath(k.string ?? "?"),
                                  message: "unknown key (known: \(allowed.sorted().joined(separator: ", ")))")
            }
        }
    }

    public func has(_ key: String) -> Bool { value(key) != nil }

    public func string(_ key: String) throws(ConfigError) -> String? {
        guard let v = value(key) else { return nil }
        guard case .scalar(let s) = v else { throw error(key, "expected a string") }
        return s.string
    }

    public func string(_ key: String, oneOf allowed: [String]) throws(ConfigError) -> String? {
        guard let s = try string(key) else { return nil }
        guard allowed.contains(s) else { throw error(key, "'\(s)' is not one of: \(allowed.joined(separator: ", "))") }
        return s
    }

    /// Integers in decimal or 0x hex.
    public func uint(_ key: String, max: UInt64 = .max) throws(ConfigError) -> UInt64? {
        guard let s = try string(key) else { return nil }
        let t = s.replacingOccurrences(of: "_", with: "")
        let v: UInt64? = t.hasPrefix("0x") ? UInt64(t.dropFirst(2), radix: 16) : UInt64(t)
        guard let v else { throw error(key, "'\(s)' is not a non-negative integer") }
        guard v <= max else { throw error(key, "\(v) is larger than the maximum \(max)") }
        return v
    }

    public func double(_ key: String) throws(ConfigError) -> Double? {
        guard let s = try string(key) else { return nil }
        guard let v = Double(s), v.isFinite else { throw error(key, "'\(s)' is not a number") }
        return v
    }

    public func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let s = try string(key) else { return nil }
        switch s.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error(key, "'\(s)' is not a boolean (true/false)")
        }
    }

    public func map(_ key: String) throws(ConfigError) -> YAMLMap? {
        guard let v = value(key) else { return nil }
        guard case .mapping(let m) = v else { throw error(key, "expected a mapping") }
        return YAMLMap(file: file, path: keyPath(key), node: v, mapping: m)
    }

    public func list(_ key: String) throws(ConfigError) -> [YAMLMap] {
        guard let v = value(key) else { return [] }
        guard case .sequence(let seq) = v else { throw error(key, "expected a list") }
        var out: [YAMLMap] = []
        for (i, item) in seq.enumerated() {
            guard case .mapping(let m) = item else {
                throw ConfigError(file: file, line: item.mark?.line, key: "\(keyPath(key))[\(i)]", message: "expected a mapping")
            }
            out.append(YAMLMap(file: file, path: "\(keyPath(key))[\(i)]", node: item, mapping: m))
        }
        return out
    }
}
