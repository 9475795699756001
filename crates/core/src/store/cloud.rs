//! object_store's clients (memory, S3, GCS, Azure) behind the [`Backend`] trait.
//!
//! The conditional writes map onto `PutMode::Create` and `PutMode::Update`. Both the `e_tag`
//! and the `version` of the last read are kept, since GCS compares generations and S3 and Azure
//! compare ETags. Reads stream the body and stop past the size limit, so a huge foreign object
//! costs no more memory than the limit.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};

use super::{error_chain, redact, Backend, Entry, Object, StoreError, Version};

/// An object_store client, under a prefix.
#[derive(Debug, Clone)]
pub struct CloudStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    description: String,
}

impl CloudStore {
    /// A backend over `inner`, with keys under `prefix`; `description` is for logs.
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: Path, description: String) -> Self {
        CloudStore {
            inner,
            prefix,
            description,
        }
    }

    /// An in-memory store.
    pub fn memory() -> Self {
        CloudStore::new(
            Arc::new(InMemory::new()),
            Path::default(),
            "memory://".to_string(),
        )
    }

    fn path_of(&self, key: &str) -> Path {
        key.split('/')
            .filter(|s| !s.is_empty())
            .fold(self.prefix.clone(), |p, s| p.join(s))
    }

    fn relative(&self, path: &Path) -> Option<String> {
        let parts: Vec<String> = path
            .prefix_match(&self.prefix)?
            .map(|p| p.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }
}

fn map_err(key: &str, e: object_store::Error) -> StoreError {
    let key = key.to_string();
    match e {
        // A missing bucket answers 404 too; its body says which 404 it is.
        object_store::Error::NotFound { ref source, .. }
            if no_bucket(&error_chain(source.as_ref())) =>
        {
            StoreError::NoBucket {
                key,
                message: concise(&redact(&error_chain(&e))),
            }
        }
        object_store::Error::NotFound { .. } => StoreError::NotFound { key },
        object_store::Error::AlreadyExists { .. } => StoreError::AlreadyExists { key },
        object_store::Error::Precondition { .. } => StoreError::Precondition { key },
        object_store::Error::NotImplemented { operation, .. } => StoreError::NotSupported {
            key,
            what: operation,
        },
        object_store::Error::NotSupported { source } => StoreError::NotSupported {
            key,
            what: redact(&source.to_string()),
        },
        object_store::Error::PermissionDenied { source, .. }
        | object_store::Error::Unauthenticated { source, .. } => StoreError::PermissionDenied {
            key,
            message: redact(&source.to_string()),
        },
        other => {
            let message = redact(&error_chain(&other));
            if no_credentials(&message) {
                StoreError::NoCredentials {
                    key,
                    message: message.chars().take(300).collect(),
                }
            } else {
                StoreError::Other { key, message }
            }
        }
    }
}

/// Whether a client error is its search for credentials failing: with none configured, the
/// AWS, GCS and Azure clients ask the instance metadata endpoint.
fn no_credentials(text: &str) -> bool {
    [
        "latest/api/token",
        "latest/meta-data/iam",
        "computeMetadata",
        "metadata/identity",
        "metadata.google.internal",
        "169.254.169.254",
    ]
    .iter()
    .any(|marker| text.contains(marker))
}

/// The store's own words from an XML error body (`<Code>`: `<Message>`), else the first 200
/// characters.
fn concise(text: &str) -> String {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find("</")? + start;
        Some(text[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => text.chars().take(200).collect(),
    }
}

/// Whether a 404's text says the bucket or container, not the object, is missing.
fn no_bucket(text: &str) -> bool {
    [
        "NoSuchBucket",
        "ContainerNotFound",
        "bucket does not exist",
        "container does not exist",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

fn version_of(e_tag: Option<String>, version: Option<String>) -> Version {
    Version { e_tag, version }
}

#[async_trait]
impl Backend for CloudStore {
    async fn get(&self, key: &str, limit: usize) -> Result<Object, StoreError> {
        let result = self
            .inner
            .get_opts(&self.path_of(key), GetOptions::default())
            .await
            .map_err(|e| map_err(key, e))?;
        let version = version_of(result.meta.e_tag.clone(), result.meta.version.clone());
        if result.meta.size > limit as u64 {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                limit,
                version,
            });
        }
        let mut stream = result.into_stream();
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map_err(key, e))?;
            if buf.len() + chunk.len() > limit {
                return Err(StoreError::TooLarge {
                    key: key.to_string(),
                    limit,
                    version,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Object {
            bytes: buf.freeze(),
            version,
        })
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError> {
        let result = self
            .inner
            .put_opts(
                &self.path_of(key),
                PutPayload::from(bytes),
                PutOptions::from(PutMode::Create),
            )
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(version_of(result.e_tag, result.version))
    }

    async fn update(
        &self,
        key: &str,
        bytes: Bytes,
        expected: &Version,
    ) -> Result<Version, StoreError> {
        let mode = PutMode::Update(UpdateVersion {
            e_tag: expected.e_tag.clone(),
            version: expected.version.clone(),
        });
        let result = self
            .inner
            .put_opts(
                &self.path_of(key),
                PutPayload::from(bytes),
                PutOptions::from(mode),
            )
            .await
            .map_err(|e| match map_err(key, e) {
                // Any 409 surfaces as AlreadyExists: on an update it is a lost race.
                StoreError::AlreadyExists { key } | StoreError::NotFound { key } => {
                    StoreError::Precondition { key }
                }
                other => other,
            })?;
        Ok(version_of(result.e_tag, result.version))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let dir = self.path_of(prefix);
        // The client pages through the listing (1,000 keys a page on S3) as the stream is read.
        let mut stream = self.inner.list(Some(&dir));
        let mut entries = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| map_err(prefix, e))?;
            if let Some(key) = self.relative(&meta.location) {
                entries.push(Entry {
                    key,
                    modified: meta.last_modified,
                    size: meta.size,
                });
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError> {
        let result = self
            .inner
            .put_opts(
                &self.path_of(key),
                PutPayload::from(bytes),
                PutOptions::from(PutMode::Overwrite),
            )
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(version_of(result.e_tag, result.version))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key);
        // S3, GCS and Azure answer a delete of a missing key with success already; a client
        // that says NotFound (memory) is brought into line.
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err(key, e)),
        }
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}
