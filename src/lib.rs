//! usage-reporter: anonymous usage reporting for a cluster of replicas sharing one bucket.
//!
//! Replicas agree on a cluster seed with a create-if-absent write ([`seed`]), elect a leader
//! through a compare-and-swap lease ([`lease`]), freeze a report at every slot aligned on the
//! seed ([`slots`], [`report`]) and the leader delivers every replica's report once
//! ([`delivery`]). Every replica serves its live report over HTTP ([`http`]). Services record
//! typed usage metrics through [`stats`]. [`replica`] puts it all together; `reporter run` is a
//! thin wrapper over it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use usage_reporter::{stats, ReplicaBuilder};
//! stats::global().counter("requests")?.inc();
//! let replica = ReplicaBuilder::new()
//!     .store("s3://bucket/usage".into())
//!     .target("querier".into())
//!     .start()
//!     .await?;
//! // ... serve ...
//! replica.shutdown().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod build_info;
pub mod cli;
pub mod clock;
pub mod defaults;
pub mod delivery;
pub mod health;
pub mod http;
pub mod inspect;
pub mod layout;
pub mod lease;
pub mod net;
pub mod process;
pub mod receiver;
pub mod replica;
pub mod report;
mod retry;
pub mod seed;
pub mod shape;
pub mod signing;
pub mod slots;
pub mod stats;
pub mod store;
pub mod tasks;
pub mod timefmt;

pub use build_info::BuildInfo;
pub use replica::{Replica, ReplicaBuilder, StartError};
pub use stats::Registry;
pub use store::Store;
