//! The lease's clock: monotonic, and on Linux counting the time a host spent suspended.
//!
//! Lease expiry is judged on each replica's own clock, never on the holder's timestamps. A plain
//! `Instant` stops while a Linux host is suspended, so a leader that wakes up would believe its
//! lease fresh while the others, whose clocks ran, have taken over; [`system_clock`] re-bases
//! `Instant` on `CLOCK_BOOTTIME`, which keeps counting. Tests give replicas skewed clocks.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A monotonic clock; tests give replicas skewed ones.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Tokio's clock, which tests can pause and advance.
pub fn tokio_clock() -> Clock {
    Arc::new(Instant::now)
}

/// Nanoseconds of `CLOCK_BOOTTIME`, which keeps counting while the host is suspended.
#[cfg(target_os = "linux")]
fn boottime() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(target_os = "linux"))]
fn boottime() -> Option<Duration> {
    None
}

/// The default clock. `Instant` stops while a Linux host is suspended, so a leader that wakes
/// up would believe its lease fresh while the others, whose clocks ran, have taken over. This
/// clock is `Instant` re-based on `CLOCK_BOOTTIME`, which counts the suspended time.
pub fn system_clock() -> Clock {
    let origin = Instant::now();
    match boottime() {
        Some(boot_origin) => Arc::new(move || {
            let elapsed = boottime()
                .map(|b| b.saturating_sub(boot_origin))
                .unwrap_or_else(|| origin.elapsed());
            origin + elapsed
        }),
        None => tokio_clock(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_follows_real_time() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let clock = system_clock();
            let (a, i) = (clock(), Instant::now());
            std::thread::sleep(Duration::from_millis(30));
            let (b, j) = (clock(), Instant::now());
            let ours = b - a;
            let theirs = j - i;
            assert!(ours >= Duration::from_millis(30), "{ours:?}");
            // Without a suspend, boot time and monotonic time agree closely.
            assert!(
                ours.abs_diff(theirs) < Duration::from_millis(5),
                "{ours:?} vs {theirs:?}"
            );
        });
    }
}
