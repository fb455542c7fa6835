//! Operating-system knobs the service uses on its own threads.

/// Nice value of background threads (the worker beside the API, the store's checkpointer).
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority (Linux: priorities are per thread), so that
/// background work gets the cores that requests and subscription messages leave idle.
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: plain system calls about the calling thread; no memory is shared.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICE) != 0 {
            tracing::debug!("could not lower a background thread's priority");
        }
    }
}
