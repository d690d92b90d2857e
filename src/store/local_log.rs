//! A local table's log listed from a version by looking up the names that can follow it,
//! not by reading the whole `_delta_log` folder.
//!
//! delta-rs finds a table's new commits by listing its `_delta_log` from the version it
//! has. An object store starts such a listing where asked (S3's `start-after`); a local
//! disk has no order, so `object_store` walks the whole folder and drops what comes first,
//! and every read of a table cost as much as its log was long (after 3,000 rounds a
//! worker's round took 5.7 times an early one). [`LocalLog`] answers those listings by
//! looking up, for each version from the offset on, its commit `N.json` and its checkpoint
//! `N.checkpoint.parquet`, until a commit is missing, and `_last_checkpoint`. A Delta log
//! has no gaps after its oldest kept entry, so that finds every commit and every
//! checkpoint delta-rs writes. It lists the whole folder as before where it cannot tell:
//! the offset's version and the one before are both missing (a log cleaned past it, an
//! empty folder), or `_last_checkpoint` names a version past the last commit found (a
//! cleanup in progress, deleting the commits below a checkpoint in no order, left a gap).
//! Kinds of log file retrylake never writes (`.crc` checksums, multi-part and UUID-named
//! checkpoints, compacted commits) are not looked up: a reader then replays the commits
//! themselves, which are all there.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use async_trait::async_trait;
use deltalake::logstore::object_store::local::LocalFileSystem;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use deltalake::logstore::{
    DeltaIOStorageBackend, ObjectStoreFactory, ObjectStoreRef, StorageConfig,
    object_store_factories,
};
use deltalake::{DeltaResult, DeltaTableError};
use futures::stream::{BoxStream, StreamExt};
use url::Url;

/// Digits of a version in a log file's name.
const VERSION_DIGITS: usize = 20;

/// Makes every local table this process opens afterwards list its log through
/// [`LocalLog`]. Idempotent.
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let file = Url::parse("file://").expect("a valid URL");
        object_store_factories().insert(file, Arc::new(LocalLogFactory));
    });
}

/// Builds [`LocalLog`] stores for `file://` tables, as delta-rs's default factory builds
/// a plain [`LocalFileSystem`].
struct LocalLogFactory;

impl ObjectStoreFactory for LocalLogFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let path = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::from(object_store::Error::from(e)))?;
        let store: ObjectStoreRef = match &config.runtime {
            Some(runtime) => Arc::new(DeltaIOStorageBackend::new(LocalLog::new(), runtime.clone())),
            None => Arc::new(LocalLog::new()),
        };
        Ok((store, path))
    }
}

/// The local file system, with listings of a `_delta_log` from a version that look up the
/// names that can follow it (see the module docs). Everything else is [`LocalFileSystem`]'s.
#[derive(Debug, Clone)]
pub struct LocalLog {
    inner: Arc<LocalFileSystem>,
}

impl LocalLog {
    /// The whole local file system, as `LocalFileSystem::new()`.
    pub fn new() -> LocalLog {
        LocalLog {
            inner: Arc::new(LocalFileSystem::new()),
        }
    }
}

impl Default for LocalLog {
    fn default() -> Self {
        LocalLog::new()
    }
}

impl fmt::Display for LocalLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalLog({})", self.inner)
    }
}

/// A version's place in a log file name: the leading 20 digits of `name`.
fn version_of(name: &str) -> Option<u64> {
    let digits = name.get(..VERSION_DIGITS)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

/// What [`probe`] found: the entries after the offset, or that it cannot tell.
enum Probe {
    Found(Vec<ObjectMeta>),
    ListAll,
}

/// Looks up the log entries of `dir` (the folder of `prefix`) after `offset`, whose name
/// starts with `version`.
fn probe(dir: &std::path::Path, prefix: &Path, offset: &Path, version: u64) -> Probe {
    let meta = |name: &str| -> Option<ObjectMeta> {
        let metadata = std::fs::metadata(dir.join(name)).ok()?;
        metadata
            .is_file()
            .then(|| object_meta(&metadata, prefix.clone().join(name)))
    };
    let commit = |v: u64| format!("{v:020}.json");
    // The log reaches the offset's version, or ends just before it: then versions from
    // there on are all that can follow. Otherwise it may start later (cleaned): list all.
    let known = meta(&commit(version)).is_some()
        || version
            .checked_sub(1)
            .is_some_and(|before| meta(&commit(before)).is_some());
    if !known {
        return Probe::ListAll;
    }
    let mut found = Vec::new();
    let mut v = version;
    while let Some(entry) = meta(&commit(v)) {
        found.push(entry);
        found.extend(meta(&format!("{v:020}.checkpoint.parquet")));
        match v.checked_add(1) {
            Some(next) => v = next,
            None => break,
        }
    }
    // A cleanup in progress deletes commits below the last checkpoint in no order, so a
    // gap may end the run of commits early: past the gap, only a listing sees them.
    let last_found = v.saturating_sub(1);
    if last_checkpoint(dir).is_some_and(|checkpoint| checkpoint > last_found) {
        return Probe::ListAll;
    }
    found.extend(meta("_last_checkpoint"));
    found.retain(|m| m.location > *offset);
    found.sort_by(|a, b| a.location.cmp(&b.location));
    Probe::Found(found)
}

/// The version `_last_checkpoint` in `dir` names, if it can be read.
fn last_checkpoint(dir: &std::path::Path) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Hint {
        version: u64,
    }
    let bytes = std::fs::read(dir.join("_last_checkpoint")).ok()?;
    serde_json::from_slice::<Hint>(&bytes)
        .ok()
        .map(|h| h.version)
}

/// An [`ObjectMeta`] as [`LocalFileSystem`] makes one (same e-tag).
fn object_meta(metadata: &std::fs::Metadata, location: Path) -> ObjectMeta {
    use std::time::SystemTime;
    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let micros = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    #[cfg(not(unix))]
    let inode = 0u64;
    let size = metadata.len();
    ObjectMeta {
        location,
        last_modified: modified.into(),
        size,
        e_tag: Some(format!("{inode:x}-{micros:x}-{size:x}")),
        version: None,
    }
}

impl LocalLog {
    /// The folder and starting version of a listing [`probe`] can answer: `prefix` is a
    /// `_delta_log` and `offset` a file in it whose name starts with a version.
    fn probed(&self, prefix: Option<&Path>, offset: &Path) -> Option<(PathBuf, u64)> {
        let prefix = prefix?;
        if prefix.filename() != Some("_delta_log") {
            return None;
        }
        let mut rest = offset.prefix_match(prefix)?;
        let name = rest.next()?;
        if rest.next().is_some() {
            return None;
        }
        let version = version_of(name.as_ref())?;
        let dir = self.inner.path_to_filesystem(prefix).ok()?;
        Some((dir, version))
    }
}

#[async_trait]
impl ObjectStore for LocalLog {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some((dir, version)) = self.probed(prefix, offset) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let (inner, prefix, offset) = (
            self.inner.clone(),
            prefix.cloned().unwrap_or_default(),
            offset.clone(),
        );
        futures::stream::once(async move {
            let (found, prefix, offset) = tokio::task::spawn_blocking(move || {
                let found = probe(&dir, &prefix, &offset, version);
                (found, prefix, offset)
            })
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "LocalLog",
                source: Box::new(e),
            })?;
            Ok(match found {
                Probe::Found(entries) => futures::stream::iter(entries.into_iter().map(Ok)).boxed(),
                Probe::ListAll => inner.list_with_offset(Some(&prefix), &offset),
            })
        })
        .map(|listing: object_store::Result<_>| match listing {
            Ok(stream) => stream,
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn touch(dir: &std::path::Path, name: &str) {
        std::fs::write(dir.join(name), b"{}").unwrap();
    }

    async fn names(store: &dyn ObjectStore, prefix: &Path, offset: &Path) -> Vec<String> {
        let mut names: Vec<String> = store
            .list_with_offset(Some(prefix), offset)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }

    /// Every offset delta-rs and the kernel pass (a bare version, a commit, a checkpoint,
    /// before the log, inside it, at its end, past it) gets what the full listing gets.
    #[tokio::test]
    async fn probing_lists_what_the_whole_folder_lists() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("t/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        // A log cleaned up to version 3, with checkpoints at 3 and 6, up to version 8.
        for v in 3..=8u64 {
            touch(&log, &format!("{v:020}.json"));
        }
        touch(&log, &format!("{:020}.checkpoint.parquet", 3));
        touch(&log, &format!("{:020}.checkpoint.parquet", 6));
        std::fs::write(log.join("_last_checkpoint"), br#"{"version":6,"size":9}"#).unwrap();
        std::fs::create_dir(log.join("_staged_commits")).unwrap();

        let plain = LocalFileSystem::new();
        let ours = LocalLog::new();
        let prefix = Path::from_absolute_path(&log).unwrap();
        let mut offsets = Vec::new();
        for v in 0..=10u64 {
            offsets.push(format!("{v:020}"));
            offsets.push(format!("{v:020}.json"));
            offsets.push(format!("{v:020}.checkpoint.parquet"));
        }
        for name in offsets {
            let offset = prefix.clone().join(name.as_str());
            // From the log's first kept version to one past its end, looked up, not listed.
            let looked_up = matches!(version_of(&name), Some(3..=9));
            assert_eq!(
                matches!(
                    probe(&log, &prefix, &offset, version_of(&name).unwrap()),
                    Probe::Found(_)
                ),
                looked_up,
                "{name}"
            );
            assert_eq!(
                names(&ours, &prefix, &offset).await,
                names(&plain, &prefix, &offset).await,
                "listing after {name}"
            );
        }
        // A cleanup in progress has removed version 4 but not yet 3 and 5: from 3, the
        // probe would stop at the gap, before the checkpoint; it lists instead.
        std::fs::remove_file(log.join(format!("{:020}.json", 4))).unwrap();
        for name in [format!("{:020}", 3), format!("{:020}.json", 3)] {
            let offset = prefix.clone().join(name.as_str());
            assert!(matches!(probe(&log, &prefix, &offset, 3), Probe::ListAll));
            assert_eq!(
                names(&ours, &prefix, &offset).await,
                names(&plain, &prefix, &offset).await,
                "listing after {name} with a gap"
            );
        }
        // Not a log folder, or not a version: the plain listing.
        let parent = Path::from_absolute_path(tmp.path().join("t")).unwrap();
        let offset = parent.clone().join("_delta_log");
        assert_eq!(
            names(&ours, &parent, &offset).await,
            names(&plain, &parent, &offset).await
        );
    }

    #[test]
    fn a_version_is_twenty_leading_digits() {
        assert_eq!(version_of("00000000000000000012.json"), Some(12));
        assert_eq!(version_of("00000000000000000012"), Some(12));
        assert_eq!(version_of("99999999999999999999"), None, "beyond u64");
        assert_eq!(version_of("0000000000000000001"), None, "19 digits");
        assert_eq!(version_of("_last_checkpoint"), None);
        assert_eq!(version_of("0000000000000000001x.json"), None);
    }
}
