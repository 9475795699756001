//! A service that embeds usage-reporter in its own axum server, on its own object store: the
//! shape a Rust team adding usage reporting to its service would write.
//!
//!   # one instance on an in-memory store:
//!   cargo run --example axum_service
//!   # three instances on one S3 bucket (object_store reads AWS_* from the environment):
//!   AWS_BUCKET_NAME=my-bucket cargo run --example axum_service -- 127.0.0.1:8081
//!
//! Then: `curl -s 127.0.0.1:8080/status/usage-stats`, or `/metrics`: the service's own
//! families and the reporter's, from one prometheus-client registry. Ctrl-C stops it cleanly,
//! the leader releasing its lease.
//!
//! The test suite runs three of these as processes on one moto bucket; these variables are its
//! knobs (a real service would read its own configuration): `USAGE_STATS_URL`,
//! `USAGE_PREFIX` (default `usage`), `USAGE_INTERVAL_SECS` (default 60) and
//! `USAGE_LEASE_TTL_SECS` (default 15).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use object_store::ObjectStore;
use usage_reporter::prometheus_client;
use usage_reporter::{stats, BuildInfo, ReplicaBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The service's own subscriber: the reporter logs through `tracing` like everything else.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

    let secs = |name: &str, default: f64| -> Result<Duration, Box<dyn std::error::Error>> {
        let text = std::env::var(name).unwrap_or(default.to_string());
        let value: f64 = text
            .parse()
            .map_err(|_| format!("{name}={text:?} is not a number of seconds"))?;
        Ok(Duration::try_from_secs_f64(value).map_err(|e| format!("{name}: {e}"))?)
    };
    let interval = secs("USAGE_INTERVAL_SECS", 60.0)?;
    let mut builder = ReplicaBuilder::new()
        .object_store(
            store,
            std::env::var("USAGE_PREFIX").unwrap_or("usage".into()),
        )
        .target("example-service")
        .build_info(BuildInfo::service(env!("CARGO_PKG_VERSION")))
        .interval(interval)
        .collect_delay((interval * 3 / 10).min(Duration::from_secs(5)))
        .lease_ttl(secs("USAGE_LEASE_TTL_SECS", 15.0)?)
        .without_endpoint();
    if let Ok(url) = std::env::var("USAGE_STATS_URL") {
        builder = builder.stats_url(url.parse()?);
    }
    let replica = builder.start().await?;

    // A failure the reporter cannot work past stops reporting, never the service.
    let failed = replica.failed();
    tokio::spawn(async move {
        let error = failed.await;
        tracing::error!(%error, "usage reporting stopped");
    });

    // The service's own Prometheus registry, with the reporter's families registered in it.
    let mut registry = prometheus_client::registry::Registry::default();
    let pages: prometheus_client::metrics::counter::Counter = Default::default();
    registry.register("example_pages", "Pages this service served", pages.clone());
    replica.metrics().register(&mut registry);
    let registry = Arc::new(registry);

    let app = Router::new()
        .route(
            "/",
            get(move || {
                requests.inc();
                pages.inc();
                async { "hello\n" }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut text = String::new();
                let encoded = prometheus_client::encoding::text::encode(&mut text, &registry);
                async move {
                    match encoded {
                        Ok(()) => text.into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        )
        .route("/status/usage-stats", replica.usage_stats())
        .merge(replica.health_routes());

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    replica.shutdown().await;
    Ok(())
}
