//! The version block of reports and seeds: `{version, revision, branch, buildUser, buildDate,
//! rustVersion}`. The reporter's own comes from build time; a service that embeds the library
//! passes its own. `buildUser` is always empty here: it names a person or host in Tempo.

use serde::{Deserialize, Serialize};

/// The report's `version` block, in Tempo's key order and spelling.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BuildInfo {
    /// The crate version (or the embedding service's).
    pub version: String,
    /// The git revision built, or empty.
    pub revision: String,
    /// The git branch built, or empty.
    pub branch: String,
    /// Always empty: a build's user names a person.
    #[serde(rename = "buildUser")]
    pub build_user: String,
    /// When the build was made.
    #[serde(rename = "buildDate")]
    pub build_date: String,
    /// The compiler's version.
    #[serde(rename = "rustVersion")]
    pub rust_version: String,
}

impl BuildInfo {
    /// This crate's own build.
    pub fn reporter() -> Self {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: env!("REPORTER_REVISION").to_string(),
            branch: env!("REPORTER_BRANCH").to_string(),
            build_user: String::new(),
            build_date: env!("REPORTER_BUILD_DATE").to_string(),
            rust_version: env!("REPORTER_RUST_VERSION").to_string(),
        }
    }

    /// A service's own version; the other fields default to unknown/empty.
    ///
    /// ```
    /// let build = usage_reporter::BuildInfo::service("2.4.1");
    /// assert_eq!(build.version, "2.4.1");
    /// ```
    pub fn service(version: impl Into<String>) -> Self {
        BuildInfo {
            version: version.into(),
            revision: String::new(),
            branch: String::new(),
            build_user: String::new(),
            build_date: String::new(),
            rust_version: env!("REPORTER_RUST_VERSION").to_string(),
        }
    }
}

/// The `User-Agent` of the reporter's HTTP requests: the crate's version, and the embedding
/// service's when it passed its own build.
pub(crate) fn user_agent(build: &BuildInfo) -> String {
    let ours = concat!("usage-reporter/", env!("CARGO_PKG_VERSION"));
    if build.version == env!("CARGO_PKG_VERSION") || build.version.is_empty() {
        ours.to_string()
    } else {
        // Only what a header may carry: the version is the service's own text.
        let version: String = build
            .version
            .chars()
            .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\'))
            .take(64)
            .collect();
        format!("{ours} (service {version})")
    }
}
