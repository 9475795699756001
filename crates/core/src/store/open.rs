//! From `--store` and `--store-option` to a [`Store`].
//!
//! Accepted: a plain path (relative or absolute), `file:///abs/path`, `memory://`,
//! `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (and the other Azure
//! and S3 URL forms object_store knows). Cloud clients take their settings, in this order, from
//! our defaults (10 s request timeout, few client retries), the standard `AWS_*`, `GOOGLE_*` and
//! `AZURE_*` environment variables, and `--store-option key=value`, each overriding the one
//! before. An unknown `--store-option` key is an error; values are never echoed, since they are
//! often secrets.

// With every cloud client left out, the cloud half of `open` is dead code by design.
#![cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure")),
    allow(unused, unreachable_code)
)]

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "s3")]
use object_store::aws::AmazonS3Builder;
#[cfg(feature = "azure")]
use object_store::azure::MicrosoftAzureBuilder;
#[cfg(feature = "gcs")]
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::ObjectStoreScheme;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
use object_store::{BackoffConfig, RetryConfig};
use url::Url;

use super::cloud::CloudStore;
use super::local::LocalDir;
use super::Store;

/// Why a store could not be opened. Always a problem with the arguments or environment.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No URL or path at all.
    #[error("the store URL is empty")]
    Empty,
    /// Not a URL.
    #[error("{url:?} is not a valid store URL: {source}")]
    BadUrl {
        /// The URL, credentials redacted.
        url: String,
        /// What the parser said.
        source: url::ParseError,
    },
    /// A `file://` URL without an absolute path.
    #[error("{url:?} is not a valid store URL: a file URL needs an absolute path, like file:///var/lib/reporter")]
    FileUrlNotAbsolute {
        /// The URL, credentials redacted.
        url: String,
    },
    /// A URL of another kind.
    #[error("store scheme {scheme:?} is not supported; use a path, file://, memory://, s3://, gs:// or az://")]
    UnsupportedScheme {
        /// The scheme given.
        scheme: String,
    },
    /// A store option its client does not know.
    #[error("store option {key:?} is not a known option for {scheme} stores")]
    UnknownOption {
        /// The option's key (its value is never shown).
        key: String,
        /// The store's scheme.
        scheme: &'static str,
    },
    /// Not `key=value`.
    #[error("store option {0:?} must look like key=value")]
    BadOption(String),
    /// Options given for a store that takes none.
    #[error("store option {0:?} has no effect on local directories or memory://")]
    OptionForLocal(String),
    /// The client refused its configuration.
    #[error("cannot configure the {scheme} store: {source}")]
    Build {
        /// The store's scheme.
        scheme: &'static str,
        /// What the client said, redacted: its text may quote a URL with a credential.
        source: super::Redacted,
    },
    /// A cloud URL without its bucket or container.
    #[error("{scheme}:// needs a bucket or container: {scheme}://BUCKET/prefix")]
    NoBucketInUrl {
        /// The scheme given.
        scheme: String,
    },
    /// A local store path that exists and is not a directory.
    #[error("{} exists and is not a directory", .0.display())]
    NotADirectory(std::path::PathBuf),
    /// A store whose client this build leaves out.
    #[error(
        "{scheme}:// stores are not in this build; rebuild with the Cargo feature {feature:?}"
    )]
    NotBuilt {
        /// The scheme given.
        scheme: String,
        /// The feature that brings its client.
        feature: &'static str,
    },
    /// The working directory could not be read.
    #[error("cannot resolve the store path: {0}")]
    Path(#[source] std::io::Error),
}

impl OpenError {
    /// Whether the error is about a store option rather than the URL.
    pub fn about_an_option(&self) -> bool {
        matches!(
            self,
            OpenError::UnknownOption { .. }
                | OpenError::BadOption(_)
                | OpenError::OptionForLocal(_)
        )
    }
}

/// The AWS client reads keys from the environment and instance roles, never profiles: say so
/// when a profile is set, rather than fail later for want of credentials.
#[cfg(feature = "s3")]
fn warn_aws_profile() {
    if let Some(profile) = std::env::var_os("AWS_PROFILE") {
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            tracing::warn!(
                profile = %profile.to_string_lossy(),
                "AWS_PROFILE is set, but profiles (~/.aws) are not read: export the profile's keys, e.g. eval \"$(aws configure export-credentials --format env)\""
            );
        }
    }
}

/// Splits `key=value`.
///
/// # Errors
///
/// [`OpenError::BadOption`] if there is no `=` or the key is empty.
pub fn parse_option(s: &str) -> Result<(String, String), OpenError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_ascii_lowercase(), v.to_string())),
        _ => Err(OpenError::BadOption(s.to_string())),
    }
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn client_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 2,
        retry_timeout: Duration::from_secs(8),
    }
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn env_options(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// Applies defaults, then environment (unknown keys skipped), then explicit options (unknown
/// keys refused) to an object_store builder.
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
macro_rules! configure {
    ($builder:expr, $key:ty, $scheme:expr, $env:expr, $url:expr, $options:expr) => {{
        let mut builder = $builder.with_url($url).with_retry(client_retry());
        for (k, v) in [("timeout", "10s"), ("connect_timeout", "5s")] {
            if let Ok(key) = k.parse::<$key>() {
                builder = builder.with_config(key, v);
            }
        }
        for (k, v) in env_options($env) {
            if let Ok(key) = k.parse::<$key>() {
                builder = builder.with_config(key, v);
            }
        }
        let mut plain_http = false;
        let mut allow_http_given = false;
        for (k, v) in env_options($env).iter().chain($options.iter()) {
            plain_http |=
                (k.contains("endpoint") || k.ends_with("_url")) && v.starts_with("http://");
            allow_http_given |= k.ends_with("allow_http");
        }
        for (k, v) in $options {
            let key = k.parse::<$key>().map_err(|_| OpenError::UnknownOption {
                key: k.clone(),
                scheme: $scheme,
            })?;
            builder = builder.with_config(key, v.clone());
        }
        // An endpoint given as http:// means plain HTTP; a second option to say so is noise.
        if plain_http && !allow_http_given {
            if let Ok(key) = "allow_http".parse::<$key>() {
                builder = builder.with_config(key, "true");
            }
        }
        builder.build().map_err(|e| OpenError::Build {
            scheme: $scheme,
            source: super::Redacted::new(&e),
        })?
    }};
}

#[allow(dead_code)]
fn not_built(url: &Url, feature: &'static str) -> OpenError {
    OpenError::NotBuilt {
        scheme: url.scheme().to_string(),
        feature,
    }
}

/// Opens the store `spec` points at. Nothing is read or written here.
///
/// ```
/// use usage_reporter_core::store;
///
/// let dir = store::open("/var/lib/reporter", &[])?;
/// assert_eq!(dir.describe(), "file:///var/lib/reporter");
/// let err = store::open("s3://bucket/prefix", &[("no_such".into(), "x".into())]).unwrap_err();
/// assert!(err.to_string().contains("no_such"));
/// # Ok::<(), store::OpenError>(())
/// ```
///
/// # Errors
///
/// [`OpenError`], in one line: an empty, malformed or unsupported URL, a cloud URL without its
/// bucket, an option its client does not know (its value never shown), options for a local
/// store, a path that is not a directory, or a client that refuses its configuration.
pub fn open(spec: &str, options: &[(String, String)]) -> Result<Store, OpenError> {
    crate::install_crypto_provider();
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(OpenError::Empty);
    }
    let local_only = |store: Store| {
        if let Some((k, _)) = options.first() {
            return Err(OpenError::OptionForLocal(k.clone()));
        }
        Ok(store)
    };
    let local = |path: std::path::PathBuf| {
        let dir = LocalDir::new(path).map_err(OpenError::Path)?;
        if dir.root().exists() && !dir.root().is_dir() {
            return Err(OpenError::NotADirectory(dir.root().to_path_buf()));
        }
        local_only(Store::new(Arc::new(dir)))
    };
    if !spec.contains("://") {
        return local(spec.into());
    }
    let url = Url::parse(spec).map_err(|source| OpenError::BadUrl {
        url: super::redact(spec),
        source,
    })?;
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| OpenError::FileUrlNotAbsolute {
                    url: super::redact(spec),
                })?;
            return local(path);
        }
        "memory" => return local_only(Store::memory()),
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss"
            if url.host_str().unwrap_or_default().is_empty() =>
        {
            return Err(OpenError::NoBucketInUrl {
                scheme: url.scheme().to_string(),
            })
        }
        _ => {}
    }
    let (scheme, prefix) =
        ObjectStoreScheme::parse(&url).map_err(|_| OpenError::UnsupportedScheme {
            scheme: url.scheme().to_string(),
        })?;
    let description = format!(
        "{}://{}/{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        prefix
    );
    let inner: Arc<dyn object_store::ObjectStore> = match scheme {
        #[cfg(feature = "s3")]
        ObjectStoreScheme::AmazonS3 => {
            warn_aws_profile();
            Arc::new(configure!(
                AmazonS3Builder::new(),
                object_store::aws::AmazonS3ConfigKey,
                "s3",
                "AWS_",
                url.as_str(),
                options
            ))
        }
        #[cfg(feature = "gcs")]
        ObjectStoreScheme::GoogleCloudStorage => Arc::new(configure!(
            GoogleCloudStorageBuilder::new(),
            object_store::gcp::GoogleConfigKey,
            "gs",
            "GOOGLE_",
            url.as_str(),
            options
        )),
        #[cfg(feature = "azure")]
        ObjectStoreScheme::MicrosoftAzure => Arc::new(configure!(
            MicrosoftAzureBuilder::new(),
            object_store::azure::AzureConfigKey,
            "az",
            "AZURE_",
            url.as_str(),
            options
        )),
        #[cfg(not(feature = "s3"))]
        ObjectStoreScheme::AmazonS3 => return Err(not_built(&url, "s3")),
        #[cfg(not(feature = "gcs"))]
        ObjectStoreScheme::GoogleCloudStorage => return Err(not_built(&url, "gcs")),
        #[cfg(not(feature = "azure"))]
        ObjectStoreScheme::MicrosoftAzure => return Err(not_built(&url, "azure")),
        _ => {
            return Err(OpenError::UnsupportedScheme {
                scheme: url.scheme().to_string(),
            })
        }
    };
    Ok(Store::new(Arc::new(CloudStore::new(
        inner,
        prefix,
        description,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: &str, options: &[(&str, &str)]) -> String {
        let options: Vec<_> = options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        open(spec, &options).unwrap_err().to_string()
    }

    #[test]
    fn accepts_every_form() {
        for spec in [
            "./data",
            "/tmp/x",
            "file:///tmp/x",
            "memory://",
            "memory:///",
        ] {
            assert!(open(spec, &[]).is_ok(), "{spec}");
        }
        let s3 = [
            ("aws_endpoint".to_string(), "http://127.0.0.1:1".to_string()),
            ("aws_region".to_string(), "us-east-1".to_string()),
            ("aws_access_key_id".to_string(), "k".to_string()),
            ("aws_secret_access_key".to_string(), "s".to_string()),
        ];
        let store = open("s3://bucket/some/prefix", &s3).unwrap();
        assert_eq!(store.describe(), "s3://bucket/some/prefix");
    }

    #[test]
    fn rejects_bad_input_with_one_line() {
        assert!(err("", &[]).contains("empty"));
        assert!(err("ftp://x/y", &[]).contains("not supported"));
        assert!(
            err("s3://", &[]).contains("needs a bucket"),
            "{}",
            err("s3://", &[])
        );
        assert!(err("gs://", &[]).contains("needs a bucket"));
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(err(file.path().to_str().unwrap(), &[]).contains("is not a directory"));
        assert!(err("file://relative/path", &[]).contains("absolute"));
        let e = err("s3://b/p", &[("no_such_key", "SECRET")]);
        assert!(e.contains("no_such_key") && !e.contains("SECRET"), "{e}");
        assert!(err("/tmp/x", &[("aws_region", "x")]).contains("no effect"));
        for e in [
            err("", &[]),
            err("ftp://x", &[]),
            err("s3://b", &[("k", "v")]),
        ] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn errors_keep_their_source_and_no_secret() {
        use std::error::Error as _;
        let e = open("s3://user:SECRET@[bad/x", &[]).unwrap_err();
        assert!(matches!(e, OpenError::BadUrl { .. }), "{e:?}");
        assert!(e.source().is_some(), "the URL parser's error is kept");
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = open("file://relative/path?sig=SECRET", &[]).unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let redacted = super::super::Redacted::new(&std::io::Error::other(
            "cannot parse https://acct.blob/c?sig=SECRET",
        ));
        assert!(!redacted.to_string().contains("SECRET"), "{redacted}");
        assert!(
            redacted.source().is_none(),
            "the unredacted original is dropped"
        );
    }

    #[test]
    fn parse_option_splits_once() {
        assert_eq!(
            parse_option("aws_endpoint=http://h:1/?a=b").unwrap(),
            ("aws_endpoint".to_string(), "http://h:1/?a=b".to_string())
        );
        assert!(parse_option("novalue").is_err());
        assert!(parse_option("=v").is_err());
    }
}
