import Dispatch
import Foundation

// How the daemon runs host calls, which block and cannot be interrupted: off the
// cooperative pool (global queue or a thread of their own), abandoned rather than awaited
// when the waiting task is cancelled, so shutdown is never held up by a scan.

/// Starts `work`, which delivers its value through `resume`, and waits for it; nil as
/// soon as the calling task is cancelled (the work itself runs on in the background: host
/// calls cannot be interrupted), so shutdown is never held up by a scan.
private func awaitUnlessCancelled<T: Sendable>(_ work: @escaping @Sendable (_ resume: @escaping @Sendable (T) -> Void) -> Void) async -> T? {
    let once = ResumeOnce<T>()
    return await withTaskCancellationHandler {
        await withCheckedContinuation { (c: CheckedContinuation<T?, Never>) in
            once.set(c)
            work { once.resume($0) }
        }
    } onCancel: {
        once.resume(nil)
    }
}

/// Runs blocking host work on a global queue so it never holds a cooperative thread.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T? {
    await awaitUnlessCancelled { resume in DispatchQueue.global(qos: .utility).async { resume(body()) } }
}

/// Waits for `task`'s value (an unstructured task is not cancelled with its waiters).
func valueUnlessCancelled<T: Sendable>(_ task: Task<T, Never>) async -> T? {
    await awaitUnlessCancelled { resume in Task { resume(await task.value) } }
}

/// Runs a scan on a thread of its own at a lower CPU priority, so that under contention
/// the event loop answering the socket (and the rest of dom0) runs first. On Linux nice
/// is a per-thread attribute, so only this thread is affected.
func runScan<T: Sendable>(nice: Int32, _ body: @escaping @Sendable () -> T) async -> T? {
    await awaitUnlessCancelled { resume in
        Thread {
            // Foundation's Thread.name does not reach the kernel here, and glibc's
            // pthread_setname_np is not visible to Swift; ps, top and perf show comm.
            try? "xenp2m-scan".write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
            if nice > 0, let tid = currentThreadID() {
                _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(tid), nice)
            }
            resume(body())
        }.start()
    }
}

/// The kernel's id of the calling thread. Glibc's gettid() is not visible to Swift here,
/// and /proc/thread-self links to "<pid>/task/<tid>".
func currentThreadID() -> Int32? {
    var buf = [CChar](repeating: 0, count: 64)
    let n = readlink("/proc/thread-self", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    let link = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return link.split(separator: "/").last.flatMap { Int32($0) }
}

private final class ResumeOnce<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T?, Never>?
    private var early: T??

    func set(_ c: CheckedContinuation<T?, Never>) {
        lock.lock()
        if let e = early {
            lock.unlock()
            c.resume(returning: e)
            return
        }
        continuation = c
        lock.unlock()
    }

    func resume(_ value: T?) {
        lock.lock()
        if let c = continuation {
            continuation = nil
            early = .some(nil) // later resumes are ignored
            lock.unlock()
            c.resume(returning: value)
            return
        }
        if early == nil { early = .some(value) }
        lock.unlock()
    }
}
