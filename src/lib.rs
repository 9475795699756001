//! usage-reporter: anonymous usage reporting for a service that runs as many replicas over one
//! shared bucket (a local directory, S3, GCS or Azure Blob).
//!
//! The replicas agree on one cluster seed with a create-if-absent write, elect one leader
//! through a compare-and-swap lease, freeze a report at every slot aligned on the seed, and the
//! leader delivers every replica's report to the stats endpoint once. Every replica serves its
//! own live report. A service records typed usage metrics through [`stats`] (one atomic
//! operation each on the hot path) and runs its replica with [`ReplicaBuilder`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use usage_reporter::{stats, ReplicaBuilder};
//!
//! async fn serve(store: Arc<dyn object_store::ObjectStore>, app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
//!     stats::global().counter("queries")?.inc();
//!     let replica = ReplicaBuilder::new().object_store(store, "usage").target("querier").without_endpoint().start().await?;
//!     let app = app.route("/status/usage-stats", replica.usage_stats());
//!     let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//!     axum::serve(listener, app).with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//!     replica.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! What a service needs is at the top level: [`ReplicaBuilder`] and its [`Options`] (defaults
//! in [`defaults`]), the running [`Replica`], [`StartError`] and [`Fatal`], [`BuildInfo`], the
//! metric handles of [`stats`], and [`store`] for a custom [`store::Backend`]. The `reporter`
//! binary (feature `cli`) is a thin wrapper over the same builder.
//!
//! # Features
//!
//! - `s3`, `gcs`, `azure` (default): the cloud store clients; local directories and
//!   `memory://` are always there.
//! - `aws-lc` (default) or `ring`: rustls' crypto provider for HTTPS; with neither, only plain
//!   `http://` stats URLs are accepted.
//! - `cli` (default): the `reporter` binary, with the receiver, clap and a log subscriber. A
//!   service leaves it out: `default-features = false, features = ["s3", "aws-lc"]`.

// missing_docs, unreachable_pub and missing_errors_doc are workspace lints (Cargo.toml).

mod build_info;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
pub mod defaults;
mod delivery;
#[doc(hidden)]
pub mod health;
#[doc(hidden)]
pub mod http;
#[doc(hidden)]
pub mod layout;
mod options;
mod process;
mod replica;
#[doc(hidden)]
pub mod report;
#[doc(hidden)]
pub mod seed;
#[doc(hidden)]
pub mod shape;
#[doc(hidden)]
pub mod slots;
pub mod stats;
mod tasks;

#[cfg(feature = "cli")]
pub(crate) use usage_reporter_core::net;
pub use usage_reporter_core::store;
pub(crate) use usage_reporter_core::{lease, retry, signing, timefmt};

/// The prometheus-client crate the reporter's own metrics are registered with
/// ([`ReporterMetrics::register`]), re-exported so a service uses the same version.
pub use prometheus_client;

pub use build_info::BuildInfo;
pub use replica::{
    OptionError, Options, Replica, ReplicaBuilder, ReporterMetrics, Setting, StartError,
    SHUTDOWN_WAIT,
};
pub use stats::Registry;
pub use store::Store;
pub use tasks::Fatal;

/// The README's code, compiled by `cargo test --doc`, so its embedding example stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// What a service must not be able to do, each checked by a doctest that must not compile.
///
/// Reach a running replica's figures (to falsify its own metrics):
/// ```compile_fail,E0599
/// # async fn demo(replica: usage_reporter::Replica) {
/// replica.health().set_leader(true, 1);
/// # }
/// ```
/// Reach its report builder (to change the cluster identity):
/// ```compile_fail,E0599
/// # async fn demo(replica: usage_reporter::Replica) {
/// let _ = replica.source();
/// # }
/// ```
/// Reset the counters a report carries:
/// ```compile_fail,E0624
/// let registry = usage_reporter::Registry::new();
/// registry.freeze(std::time::Instant::now());
/// ```
/// Build options field by field, which any new option would break:
/// ```compile_fail,E0639
/// let _ = usage_reporter::Options { target: "x".into() };
/// ```
/// Match an error exhaustively, which any new variant would break:
/// ```compile_fail,E0004
/// fn why(e: usage_reporter::StartError) -> &'static str {
///     match e {
///         usage_reporter::StartError::Invalid(_) => "invalid",
///         usage_reporter::StartError::Store(_) => "store",
///         usage_reporter::StartError::Client(_) => "client",
///         usage_reporter::StartError::NoConditionalWrites(_) => "local",
///         usage_reporter::StartError::Listen { .. } => "listen",
///     }
/// }
/// ```
#[cfg(doctest)]
struct SurfaceDoctests;
