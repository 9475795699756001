//! A plain directory as a bucket, with compare-and-swap that is safe across processes.
//!
//! object_store's `LocalFileSystem` can create-if-absent but refuses compare-and-swap, so the
//! reporter keeps local directories itself:
//! - every write goes to a temporary file in the target's directory, is synced, then appears
//!   under its name in one atomic step, so a reader never sees half an object;
//! - `create` publishes with `hard_link`, which fails if the name exists: one winner;
//! - `update` holds an exclusive `flock` on `<root>/.usage-reporter.lock`, compares the current
//!   content's tag with the expected one, and publishes with `rename`;
//! - the version tag is a hash of the content (length and FNV-1a), not inode and mtime, which
//!   the kernel reuses and rounds. Every record the reporter updates carries a nonce, so equal
//!   tags mean equal bytes.
//!
//! Temporary and lock files start with `.` and are never listed.
//!
//! Links are never followed below the root: an object is read only when it is a regular file
//! opened with `O_NOFOLLOW` under directories that are not links, so a link planted in the
//! bucket cannot make the reporter read, or send, a file from elsewhere on the host. (The root
//! itself may be a link: that is the operator's choice.) Opening with `O_NONBLOCK` keeps a pipe
//! from blocking a read for ever.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, Entry, Object, StoreError, Version};

const LOCK_FILE: &str = ".usage-reporter.lock";

/// A directory as a bucket.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// A store rooted at `root` (made absolute; created on the first write).
    ///
    /// # Errors
    ///
    /// The working directory cannot be read, for a relative `root`.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()?.join(root)
        };
        // Drop `.` parts so logs show a clean path; `..` stays, as symlinks make it meaningful.
        let root = root
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        Ok(LocalDir { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let mut path = self.root.clone();
        for segment in key.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(StoreError::Other {
                    key: key.to_string(),
                    message: "invalid key".to_string(),
                });
            }
            path.push(segment);
        }
        Ok(path)
    }
}

/// The content tag: length and 64-bit FNV-1a of the bytes, computed as they stream by.
#[derive(Clone, Copy)]
struct Tagger {
    hash: u64,
    len: u64,
}

impl Tagger {
    fn new() -> Self {
        Tagger {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
        }
    }
    fn feed(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.len += bytes.len() as u64;
    }
    fn version(&self) -> Version {
        Version {
            e_tag: Some(format!("{:x}-{:016x}", self.len, self.hash)),
            version: None,
        }
    }
}

fn tagged(bytes: &[u8]) -> Version {
    let mut t = Tagger::new();
    t.feed(bytes);
    t.version()
}

fn map_io(key: &str, e: io::Error) -> StoreError {
    let key = key.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => StoreError::NotFound { key },
        io::ErrorKind::AlreadyExists => StoreError::AlreadyExists { key },
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StoreError::PermissionDenied {
                key,
                message: e.to_string(),
            }
        }
        _ => StoreError::Other {
            key,
            message: e.to_string(),
        },
    }
}

async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Other {
            key: key.to_string(),
            message: format!("local store task failed: {e}"),
        })
    })
}

/// Refuses a path that passes through a link below `root`.
fn no_links_below(root: &Path, key: &str, path: &Path) -> Result<(), StoreError> {
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
        match fs::symlink_metadata(d) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(StoreError::NotRegular {
                    key: key.to_string(),
                    what: "a directory on its path is a symbolic link",
                })
            }
            _ => {}
        }
        dir = d.parent();
    }
    Ok(())
}

/// What a file that is not a regular file is, for the error.
fn kind_of(file_type: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_fifo() {
        "a pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a device"
    }
}

/// Opens a regular file for reading without following a link and without blocking on a pipe.
fn open_regular(key: &str, path: &Path) -> Result<File, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => StoreError::NotRegular {
                key: key.to_string(),
                what: "a symbolic link",
            },
            _ => map_io(key, e),
        })?;
    let file_type = file.metadata().map_err(|e| map_io(key, e))?.file_type();
    if !file_type.is_file() {
        return Err(StoreError::NotRegular {
            key: key.to_string(),
            what: kind_of(file_type),
        });
    }
    Ok(file)
}

/// Reads up to `limit` bytes; past that, keeps hashing (bounded memory) so the caller still
/// learns the object's version.
fn read_limited(key: &str, path: &Path, limit: usize) -> Result<Object, StoreError> {
    let mut file = open_regular(key, path)?;
    let mut kept = Vec::new();
    let mut tagger = Tagger::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_io(key, e)),
        };
        tagger.feed(&chunk[..n]);
        if kept.len() <= limit {
            kept.extend_from_slice(&chunk[..n]);
        }
    }
    if tagger.len > limit as u64 {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            limit,
            version: tagger.version(),
        });
    }
    Ok(Object {
        bytes: Bytes::from(kept),
        version: tagger.version(),
    })
}

/// Writes `bytes` to a fresh hidden file beside `target` and syncs it.
/// Fault injection for the tests, off unless `REPORTER_TEST_STALL_BEFORE_LINK` is set to
/// `<key prefix>=<milliseconds>`: a create of a key under that prefix waits that long between
/// writing its bytes and linking them into place, as a process paused there would (the
/// receiver's integrity tests use it to reproduce a stall no timestamp can order).
fn stall_before_link(key: &str) {
    static STALL: std::sync::OnceLock<Option<(String, std::time::Duration)>> =
        std::sync::OnceLock::new();
    let stall = STALL.get_or_init(|| {
        let v = std::env::var("REPORTER_TEST_STALL_BEFORE_LINK").ok()?;
        let (prefix, ms) = v.rsplit_once('=')?;
        Some((
            prefix.to_string(),
            std::time::Duration::from_millis(ms.parse().ok()?),
        ))
    });
    if let Some((prefix, wait)) = stall {
        if key.starts_with(prefix.as_str()) {
            std::thread::sleep(*wait);
        }
    }
}

fn write_temp(key: &str, target: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let dir = target.parent().ok_or_else(|| StoreError::Other {
        key: key.to_string(),
        message: "no parent directory".to_string(),
    })?;
    fs::create_dir_all(dir).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => map_io(key, e),
        // Neither a directory nor one that can be made here: the store path itself is wrong.
        _ => StoreError::NoBucket {
            key: key.to_string(),
            message: format!("cannot create {}: {e}", dir.display()),
        },
    })?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        // A concurrent delete may remove an emptied directory under us: make it again.
        let mut attempts = 0;
        let mut file = loop {
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                    fs::create_dir_all(dir)?;
                }
                other => break other?,
            }
        };
        file.write_all(bytes)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(map_io(key, e))
        }
    }
}

impl LocalDir {
    /// Runs `f(key, path)` on the blocking pool, once the key's path is known to pass through
    /// no link below the root.
    async fn at<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&str, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        let k = key.to_string();
        blocking(key, move || {
            no_links_below(&root, &k, &path)?;
            f(&k, &path)
        })
        .await
    }
}

/// Writes `bytes` to a temporary file and renames it over `path`, in one atomic step.
fn replace(key: &str, path: &Path, bytes: &[u8]) -> Result<Version, StoreError> {
    let temp = write_temp(key, path, bytes)?;
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(map_io(key, e));
    }
    Ok(tagged(bytes))
}

#[async_trait]
impl Backend for LocalDir {
    async fn get(&self, key: &str, limit: usize) -> Result<Object, StoreError> {
        self.at(key, move |k, path| read_limited(k, path, limit))
            .await
    }

    async fn create(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError> {
        self.at(key, move |k, path| {
            let temp = write_temp(k, path, &bytes)?;
            stall_before_link(k);
            let linked = fs::hard_link(&temp, path);
            let _ = fs::remove_file(&temp);
            linked.map_err(|e| map_io(k, e))?;
            Ok(tagged(&bytes))
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        bytes: Bytes,
        expected: &Version,
    ) -> Result<Version, StoreError> {
        let lock_path = self.root.join(LOCK_FILE);
        let expected = expected.clone();
        self.at(key, move |k, path| {
            fs::create_dir_all(lock_path.parent().unwrap_or(Path::new("/")))
                .map_err(|e| map_io(k, e))?;
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| map_io(k, e))?;
            lock.lock().map_err(|e| map_io(k, e))?;
            let current = match read_limited(k, path, 0) {
                Ok(current) => current.version,
                Err(StoreError::TooLarge { version, .. }) => version,
                Err(StoreError::NotFound { .. }) => {
                    return Err(StoreError::Precondition { key: k.to_string() });
                }
                Err(e) => return Err(e),
            };
            if current.e_tag != expected.e_tag {
                return Err(StoreError::Precondition { key: k.to_string() });
            }
            let version = replace(k, path, &bytes)?;
            drop(lock);
            Ok(version)
        })
        .await
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError> {
        self.at(key, move |k, path| replace(k, path, &bytes)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let dir = match prefix.trim_end_matches('/') {
            "" => self.root.clone(),
            p => self.path_of(p)?,
        };
        let root = self.root.clone();
        let k = prefix.to_string();
        blocking(prefix, move || {
            let mut keys = Vec::new();
            let mut stack = vec![dir];
            while let Some(dir) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    // Nothing under a prefix that does not exist, or that names an object.
                    Err(e)
                        if e.kind() == io::ErrorKind::NotFound
                            || e.raw_os_error() == Some(libc::ENOTDIR) =>
                    {
                        continue
                    }
                    Err(e) => return Err(map_io(&k, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| map_io(&k, e))?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if name.starts_with('.') {
                        continue;
                    }
                    let path = entry.path();
                    let file_type = entry.file_type().map_err(|e| map_io(&k, e))?;
                    if file_type.is_dir() {
                        stack.push(path);
                    } else if let Ok(rel) = path.strip_prefix(&root) {
                        let parts: Vec<_> = rel
                            .components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .collect();
                        // A link's own time and size: nothing is followed.
                        let (modified, size) = match fs::symlink_metadata(&path) {
                            Ok(m) => (
                                m.modified()
                                    .map(chrono::DateTime::<chrono::Utc>::from)
                                    .unwrap_or_default(),
                                m.len(),
                            ),
                            // Deleted since the directory was read.
                            Err(_) => continue,
                        };
                        keys.push(Entry {
                            key: parts.join("/"),
                            modified,
                            size,
                        });
                    }
                }
            }
            keys.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(keys)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let root = self.root.clone();
        self.at(key, move |k, path| {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(map_io(k, e)),
            }
            // Object stores have no directories: do not leave empty ones behind either (one per
            // slot would pile up). `remove_dir` fails, harmlessly, on one that is not empty.
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| *d != root && d.starts_with(&root)) {
                if fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn keys(store: &LocalDir, prefix: &str) -> Vec<String> {
        let entries = store.list(prefix).await.unwrap();
        entries.into_iter().map(|e| e.key).collect()
    }

    #[tokio::test]
    async fn delete_leaves_no_empty_directories_and_create_recreates_them() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalDir::new(tmp.path().join("b")).unwrap();
        store
            .create("usage/reports/1/a.json", Bytes::from("x"))
            .await
            .unwrap();
        store
            .create("usage/reports/1/b.json", Bytes::from("y"))
            .await
            .unwrap();
        store
            .create("usage/lease.json", Bytes::from("l"))
            .await
            .unwrap();
        store.delete("usage/reports/1/a.json").await.unwrap();
        assert!(tmp.path().join("b/usage/reports/1").is_dir());
        store.delete("usage/reports/1/b.json").await.unwrap();
        assert!(!tmp.path().join("b/usage/reports").exists());
        assert!(tmp.path().join("b/usage/lease.json").is_file());
        store
            .create("usage/reports/2/a.json", Bytes::from("z"))
            .await
            .unwrap();
        assert_eq!(
            keys(&store, "usage/reports/").await,
            ["usage/reports/2/a.json"]
        );
        // Deleting what is not there is no error, as on every object store.
        store.delete("usage/reports/9/none.json").await.unwrap();
    }

    #[tokio::test]
    async fn links_pipes_and_directories_are_never_read_through() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret.json"), "SECRET").unwrap();
        let store = LocalDir::new(tmp.path().join("b")).unwrap();
        store
            .create("usage/reports/1/a.json", Bytes::from("x"))
            .await
            .unwrap();
        let dir = tmp.path().join("b/usage/reports/1");
        std::os::unix::fs::symlink(outside.join("secret.json"), dir.join("l.json")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("b/usage/reports/2")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("p.json").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        fs::create_dir(dir.join("d.json")).unwrap();
        for (key, what) in [
            ("usage/reports/1/l.json", "a symbolic link"),
            ("usage/reports/1/p.json", "a pipe"),
            ("usage/reports/1/d.json", "a directory"),
            (
                "usage/reports/2/secret.json",
                "a directory on its path is a symbolic link",
            ),
        ] {
            match store.get(key, 1 << 20).await {
                Err(StoreError::NotRegular { what: w, .. }) => assert_eq!(w, what, "{key}"),
                other => panic!("{key}: {other:?}"),
            }
        }
        // Nothing is written through a linked directory either.
        assert!(matches!(
            store
                .create("usage/reports/2/new.json", Bytes::from("y"))
                .await,
            Err(StoreError::NotRegular { .. })
        ));
        assert!(!outside.join("new.json").exists());
        // Deleting a link removes the link, never its target.
        store.delete("usage/reports/1/l.json").await.unwrap();
        assert_eq!(fs::read(outside.join("secret.json")).unwrap(), b"SECRET");
    }

    #[tokio::test]
    async fn versions_change_with_content_and_guard_updates() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalDir::new(tmp.path()).unwrap();
        let v1 = store.create("k", Bytes::from("one")).await.unwrap();
        assert!(matches!(
            store.create("k", Bytes::from("two")).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        let v2 = store.update("k", Bytes::from("two"), &v1).await.unwrap();
        assert_ne!(v1, v2);
        assert!(matches!(
            store.update("k", Bytes::from("three"), &v1).await,
            Err(StoreError::Precondition { .. })
        ));
        assert!(matches!(
            store.update("missing", Bytes::from("x"), &v1).await,
            Err(StoreError::Precondition { .. })
        ));
        let got = store.get("k", 100).await.unwrap();
        assert_eq!((got.bytes.as_ref(), got.version), (b"two".as_ref(), v2));
        assert!(matches!(
            store.get("k", 2).await,
            Err(StoreError::TooLarge { .. })
        ));
        // No temporary or lock file is listed.
        assert_eq!(keys(&store, "").await, ["k"]);
    }
}
