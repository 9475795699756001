//! What usage-reporter's sender (the `usage-reporter` crate a service embeds) and its receiver
//! (`usage-reporter-receiver`) share, and nothing either alone needs:
//!
//! - [`store`]: the bucket behind one small [`store::Backend`] trait (a local directory, or
//!   object_store's S3, GCS, Azure and memory clients) with the two conditional writes the
//!   cluster's agreement rests on, a deadline on every call, a start-up self-test, and a
//!   [`store::StoreObserver`] told of every request;
//! - [`lease`]: a leader election over one lease object, kept by compare-and-swap, in the style
//!   of client-go's `leaderelection` (its clock model is in the module's doc);
//! - [`serve`]: the bounded HTTP server of both a replica's endpoint and the receiver;
//! - [`signing`]: the Ed25519 signature a cluster puts on its reports and the receiver checks;
//! - [`retry`], [`timefmt`], [`clock`], [`net`], [`metrics`]: the small parts under them.
//!
//! Most services want `usage-reporter` itself, not this crate.

// missing_docs, unreachable_pub and missing_errors_doc are workspace lints (Cargo.toml).

#[cfg(all(
    any(feature = "s3", feature = "gcs", feature = "azure"),
    not(any(feature = "aws-lc", feature = "ring"))
))]
compile_error!(
    "the cloud stores (features \"s3\", \"gcs\", \"azure\") speak HTTPS: enable \"aws-lc\" or \"ring\" beside them"
);

pub mod clock;
pub mod lease;
pub mod metrics;
pub mod net;
pub mod retry;
pub mod serve;
pub mod signing;
pub mod store;
pub mod timefmt;

/// Installs the crypto provider chosen by feature (`ring`) as the process's rustls default,
/// once, before the first HTTPS client is built; with `aws-lc` (reqwest's own default) there is
/// nothing to install. Idempotent, and harmless when the process installed one itself.
pub fn install_crypto_provider() {
    #[cfg(all(feature = "ring", not(feature = "aws-lc")))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
        });
    }
}

/// Whether this build can make HTTPS requests (a crypto provider was chosen by feature).
pub const HTTPS: bool = cfg!(any(feature = "aws-lc", feature = "ring"));
