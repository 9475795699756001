//! A service that embeds usage-reporter: it records its own usage metrics and runs a replica
//! in-process, which serves `/status/usage-stats` and takes part in the cluster like
//! `reporter run` does.
//!
//!   cargo run --example embedded -- ./reporter-data
//!
//! Then: `curl -s 127.0.0.1:3201/status/usage-stats`. Ctrl-C stops it cleanly.

use std::time::Duration;

use usage_reporter::{stats, BuildInfo, ReplicaBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let store = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./reporter-data".to_string());

    // Typed handles: get-or-create by name, cheap to use on the hot path.
    let registry = stats::global();
    let requests = registry.counter("requests")?;
    let latency = registry.statistics("request_seconds")?;
    let tenants = registry.words("distinct_tenants")?;
    registry.string("storage_backend")?.set("local");

    let replica = ReplicaBuilder::new()
        .store(store)
        .listen("127.0.0.1:3201".parse()?)
        .target("example-service")
        .interval(Duration::from_secs(60))
        .collect_delay(Duration::from_secs(5))
        .build_info(BuildInfo::service(env!("CARGO_PKG_VERSION")))
        .metric("deployment_mode", "single-binary")
        .start()
        .await?;
    println!(
        "usage stats at http://{}/status/usage-stats",
        replica.local_addr()
    );

    // The service's own work, recording usage as it goes.
    let work = tokio::spawn(async move {
        let mut i = 0u64;
        loop {
            requests.inc();
            latency.record(0.001 * (i % 50) as f64);
            tenants.add(&format!("tenant-{}", i % 7));
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    tokio::signal::ctrl_c().await?;
    work.abort();
    replica.shutdown().await;
    Ok(())
}
