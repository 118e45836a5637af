//! Where threads run (Linux): pinning to CPUs, and the `SCHED_IDLE` class, whose threads run
//! only when nothing else on their CPU wants it.

use anyhow::{bail, Result};

/// A thread's kernel id, for changing its class from another thread.
pub type Tid = i32;

#[cfg(target_os = "linux")]
pub fn current_tid() -> Tid {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Pins the calling thread (and the threads it starts later) to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_current(cpus: &[usize]) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET only writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("cannot pin to CPUs {cpus:?}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Moves thread `tid` (0: the caller) into the `SCHED_IDLE` class, or back to the normal one.
#[cfg(target_os = "linux")]
pub fn set_idle(tid: Tid, idle: bool) -> Result<()> {
    let p = libc::sched_param { sched_priority: 0 };
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    // SAFETY: `p` is a valid sched_param for both policies.
    if unsafe { libc::sched_setscheduler(tid, policy, &p) } != 0 {
        bail!(
            "cannot move thread {tid} to {}: {}",
            if idle { "SCHED_IDLE" } else { "SCHED_OTHER" },
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Whether a thread of this process may leave `SCHED_IDLE` again: Linux allows it only with
/// CAP_SYS_NICE or an RLIMIT_NICE of 20 (sched(7)), which containers often lack. Tried on a
/// scratch thread, so that no thread that matters can be stranded there.
#[cfg(target_os = "linux")]
pub fn can_leave_idle() -> bool {
    std::thread::spawn(|| set_idle(0, true).and_then(|_| set_idle(0, false)).is_ok())
        .join()
        .unwrap_or(false)
}

#[cfg(not(target_os = "linux"))]
pub fn current_tid() -> Tid {
    0
}

#[cfg(not(target_os = "linux"))]
pub fn pin_current(_cpus: &[usize]) -> Result<()> {
    bail!("CPU pinning is only supported on Linux")
}

#[cfg(not(target_os = "linux"))]
pub fn set_idle(_tid: Tid, _idle: bool) -> Result<()> {
    bail!("SCHED_IDLE is only supported on Linux")
}

#[cfg(not(target_os = "linux"))]
pub fn can_leave_idle() -> bool {
    false
}
