import P2MEngine

/// Reads fuzz input bytes front to back. Past the end every read yields zero, so any
/// byte string decodes to some guest: libFuzzer's mutations never hit a parse error that
/// would hide the engine behind the decoder.
public struct ByteReader {
    let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { max(0, bytes.count - offset) }

    public mutating func u8() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    public mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
    public mutating func bool() -> Bool { u8() & 1 == 1 }
}

/// The encoder matching `ByteReader`, for seeds and regression inputs written by hand.
public struct ByteWriter {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { u8(UInt8(v & 0xff)); u8(UInt8(v >> 8)) }
    public mutating func u32(_ v: UInt32) { u16(UInt16(v & 0xffff)); u16(UInt16(v >> 16)) }
    public mutating func u64(_ v: UInt64) { u32(UInt32(v & 0xffff_ffff)); u32(UInt32(v >> 32)) }
}

/// Word values a hostile guest would try, chosen by a tag byte. Tags name frames of the
/// decoded guest by index, so mutations keep producing references the walker follows
/// instead of random numbers it rejects at the first range check.
public enum ValueTag: UInt8, CaseIterable {
    case zero = 0, invalid, frameMFN, framePTE, framePTELarge, framePTENotPresent, aboveMaxMFN,
         identity, foreign, raw64, dataMFN, invalid32, frameMFNNearMiss, rawPTE

    static func decode(_ b: UInt8) -> ValueTag { ValueTag(rawValue: b % UInt8(ValueTag.allCases.count))! }
}

/// What a value tag needs to become a word.
struct ValueContext {
    var width: GuestWidth
    var maxMFN: UInt64
    var dataBase: UInt64
    /// MFNs of the guest's content frames (index = frame number in the input).
    var frameMFNs: [UInt64]

    func frame(_ i: UInt8) -> UInt64 {
        frameMFNs.isEmpty ? 0 : frameMFNs[Int(i) % frameMFNs.count]
    }

    func value(_ r: inout ByteReader) -> UInt64 {
        let tag = ValueTag.decode(r.u8())
        switch tag {
        case .zero: return 0
        case .invalid: return .max
        case .frameMFN: return frame(r.u8())
        case .framePTE: return frame(r.u8()) << pageShift | 0x63
        case .framePTELarge: return frame(r.u8()) << pageShift | 0xe3
        case .framePTENotPresent: return frame(r.u8()) << pageShift | 0x62
        case .aboveMaxMFN: return maxMFN &+ 1 &+ UInt64(r.u8())
        case .identity: return P2MEntry.identity(UInt64(r.u16()), width)
        case .foreign: return P2MEntry.foreign(UInt64(r.u16()), width)
        case .raw64: return r.u64()
        case .dataMFN: return dataBase &+ UInt64(r.u16())
        case .invalid32: return 0xffff_ffff
        case .frameMFNNearMiss: return frame(r.u8()) &+ UInt64(r.u8())
        case .rawPTE: return UInt64(r.u16()) << pageShift | 0x63
        }
    }
}

extension ByteWriter {
    mutating func value(_ tag: ValueTag, _ payload: [UInt8] = []) {
        u8(tag.rawValue)
        for b in payload { u8(b) }
    }
}
