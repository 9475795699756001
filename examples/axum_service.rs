//! A service that embeds usage-reporter in its own axum server, on its own object store: the
//! shape a Rust team adding usage reporting to its service would write.
//!
//!   # one instance on an in-memory store:
//!   cargo run --example axum_service
//!   # three instances on one S3 bucket (object_store reads AWS_* from the environment):
//!   AWS_BUCKET_NAME=my-bucket cargo run --example axum_service -- 127.0.0.1:8081
//!
//! Then: `curl -s 127.0.0.1:8080/status/usage-stats`. Ctrl-C stops it cleanly, the leader
//! releasing its lease.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use object_store::ObjectStore;
use usage_reporter::{stats, BuildInfo, ReplicaBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The service's own subscriber: the reporter logs through `tracing` like everything else.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let listen = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());

    // The service's own object store.
    let store: Arc<dyn ObjectStore> = match std::env::var("AWS_BUCKET_NAME") {
        Ok(_) => Arc::new(object_store::aws::AmazonS3Builder::from_env().build()?),
        Err(_) => Arc::new(object_store::memory::InMemory::new()),
    };

    // Usage metrics: typed handles, one atomic operation each on the hot path.
    let requests = stats::global().counter("requests")?;
    stats::global().string("storage_backend")?.set("s3");

    let replica = ReplicaBuilder::new()
        .object_store(store, "usage")
        .target("example-service")
        .build_info(BuildInfo::service(env!("CARGO_PKG_VERSION")))
        .interval(Duration::from_secs(60))
        .collect_delay(Duration::from_secs(5))
        .without_endpoint()
        .start()
        .await?;

    // A failure the reporter cannot work past stops reporting, never the service.
    let failed = replica.failed();
    tokio::spawn(async move {
        let error = failed.await;
        tracing::error!(%error, "usage reporting stopped");
    });

    let reporter_metrics = replica.metrics();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                requests.inc();
                async { "hello\n" }
            }),
        )
        // The service's own metrics route, with the reporter's families appended.
        .route(
            "/metrics",
            get(move || {
                let text = format!(
                    "# the service's own families here\n{}",
                    reporter_metrics.render()
                );
                async move { text }
            }),
        )
        .route("/status/usage-stats", replica.usage_stats())
        .merge(replica.health_routes());

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("serving on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    replica.shutdown().await;
    Ok(())
}
