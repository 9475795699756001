//! What the process can honestly say about itself, for the report's built-in metrics: CPU time
//! and its sampled maximum, threads, resident and virtual memory, and the platform by Go's
//! names (which receivers built for Tempo's data expect). Nothing here names the host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Go's names for the platform, which receivers built for Tempo's data expect.
pub(crate) fn go_os() -> &'static str {
    match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    }
}

/// The architecture by Go's name (`amd64`, `arm64`).
pub(crate) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// Highest process CPU use, in percent of one core, among the samples since the last freeze.
#[derive(Debug)]
pub struct CpuSampler {
    last: Mutex<Option<(Instant, Duration)>>,
    max_bits: AtomicU64,
}

impl Default for CpuSampler {
    fn default() -> Self {
        CpuSampler {
            last: Mutex::new(process_cpu_time().map(|t| (Instant::now(), t))),
            max_bits: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl CpuSampler {
    /// Takes one sample: CPU time used since the previous sample over wall time.
    pub fn sample(&self) {
        let Some(cpu) = process_cpu_time() else {
            return;
        };
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if let Some((t0, c0)) = *last {
            let wall = now.saturating_duration_since(t0).as_secs_f64();
            if wall > 0.0 {
                let pct = cpu.saturating_sub(c0).as_secs_f64() / wall * 100.0;
                let _ = self
                    .max_bits
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                        (pct > f64::from_bits(bits)).then_some(pct.to_bits())
                    });
            }
        }
        *last = Some((now, cpu));
    }

    /// The highest sample since the last freeze.
    pub fn max(&self) -> f64 {
        f64::from_bits(self.max_bits.load(Ordering::Relaxed))
    }

    /// The maximum so far, and a fresh start for the next slot.
    pub fn take_max(&self) -> f64 {
        f64::from_bits(self.max_bits.swap(0f64.to_bits(), Ordering::Relaxed))
    }
}

/// User plus system CPU time of this process.
pub(crate) fn process_cpu_time() -> Option<Duration> {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Some(Duration::from_micros(
        micros(usage.ru_utime) + micros(usage.ru_stime),
    ))
}

/// Threads of this process (Linux), from `/proc/self/stat`.
pub(crate) fn num_threads() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; num_threads is field 20 overall.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(17)?.parse().ok()
}

/// What the process can honestly say about its memory.
pub(crate) fn memstats() -> Value {
    match memory_stats::memory_stats() {
        Some(m) => json!({"resident_bytes": m.physical_mem, "virtual_bytes": m.virtual_mem}),
        None => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_sampler_sees_work() {
        let c = CpuSampler::default();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        c.sample();
        assert!(x > 0);
        assert!(c.max() > 0.0, "{}", c.max());
        assert!(c.take_max() > 0.0);
        assert_eq!(c.max(), 0.0);
    }
}
