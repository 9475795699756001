//! Hot-path cost of recording usage metrics, against a bare atomic and a mutex.
//!
//!   cargo bench --bench hot_path
//!
//! Prints nanoseconds per operation for 1 and N threads (N = available cores), each thread
//! doing the operation in a tight loop. Figures for this machine are in README.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use usage_reporter::stats::Registry;

/// `cargo bench` passes `--bench`; under `cargo test` this runs as a quick smoke test.
fn ops() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        5_000_000
    } else {
        10_000
    }
}

/// Runs `op` ops() times on each of `threads` threads; returns ns per op per thread.
fn measure<F: Fn(u64) + Sync>(threads: usize, op: F) -> f64 {
    let ops = ops();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || {
                for i in 0..ops {
                    op(black_box(i ^ t as u64));
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn main() {
    let cores = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let registry = Registry::new();
    let counter = registry.counter("c").unwrap();
    let stats = registry.statistics("s").unwrap();
    let words = registry.words("w").unwrap();
    let int = registry.int("i").unwrap();
    let atomic = Arc::new(AtomicU64::new(0));
    let mutex = Arc::new(Mutex::new(0u64));
    let vocabulary: Vec<String> = (0..1000).map(|i| format!("tenant-{i}")).collect();

    println!(
        "{:<34} {:>12} {:>12}",
        "operation (ns/op per thread)",
        "1 thread",
        format!("{cores} threads")
    );
    let row = |name: &str, f: &(dyn Fn(u64) + Sync)| {
        let one = measure(1, f);
        let many = measure(cores, f);
        println!("{name:<34} {one:>12.2} {many:>12.2}");
    };
    row("bare AtomicU64::fetch_add", &|_| {
        atomic.fetch_add(1, Ordering::Relaxed);
    });
    row("Mutex<u64> += 1", &|_| {
        *mutex.lock().unwrap() += 1;
    });
    row("Counter::inc", &|_| counter.inc());
    row("IntVar::set", &|i| int.set(i as i64));
    row("Statistics::record", &|i| stats.record(i as f64));
    row("WordCounter::add (seen word)", &|i| {
        words.add(&vocabulary[(i % 1000) as usize])
    });
    black_box(counter.total());

    // Memory per distinct word: resident growth while a fresh counter takes a million long
    // words (the words themselves are generated one at a time and dropped).
    let distinct = if ops() > 100_000 { 1_000_000 } else { 10_000 };
    let fresh = registry.words("memory").unwrap();
    let before = memory_stats::memory_stats().map_or(0, |m| m.physical_mem);
    for i in 0..distinct {
        fresh.add(&format!("a-rather-long-user-or-tenant-identifier-{i:012}"));
    }
    let after = memory_stats::memory_stats().map_or(0, |m| m.physical_mem);
    println!(
        "WordCounter memory: {:.1} bytes per distinct word ({} words of 52 bytes)",
        after.saturating_sub(before) as f64 / distinct as f64,
        fresh.count()
    );
}
