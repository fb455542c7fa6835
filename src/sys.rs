//! Operating-system knobs the service uses: its threads' priorities, its open-files limit.

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

/// mimalloc's `mi_option_purge_delay` (mimalloc.h's `mi_option_e`; libmimalloc-sys names the
/// options around it but not this one).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Has mimalloc (the binaries' global allocator) give freed pages back to the system at once.
/// By default it waits a second, but only a thread that allocates again ever does it, so memory
/// freed by threads that then went idle (a burst's workers, blocking-pool threads, sockets'
/// tasks) stayed resident for good: 440 MB after 1,000 tasks, 167 MB with this and huge pages
/// off (`no_thp`, Cargo.toml). The cost is a system call per freed page run. Left alone when
/// `MIMALLOC_PURGE_DELAY` is set.
pub fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: sets one of mimalloc's option values (a plain integer it reads when it purges).
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// Raises the soft open-files limit to the hard one (as Go's runtime does at start: the soft
/// limit is often 1,024, a few hundred subscribers) and returns the limit now in force; `None`
/// where it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        Some(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}
