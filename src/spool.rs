//! The local spool: a durable file queue of verified webhooks, kept on disk while Postgres is
//! unavailable. It knows records and files only; `ingest` appends to it and replays it.
//!
//! Invariant: a request is answered only after its record is durable. A record is written to
//! a temporary file, fsynced, renamed into place and the directory fsynced; a crash before the
//! rename leaves only a temporary file, which was never acknowledged and is removed at start.
//! A record is removed only after it is stored, so a crash during replay stores a record at
//! most twice, and storing is idempotent. A record that can never be stored is moved to
//! `failed/` and logged, so one bad file never blocks the rest.
//!
//! Files are named `<receive time in µs>-<instance>-<sequence>.json`, so a directory listing
//! sorted by name is the arrival order.

use crate::{metrics::Metrics, reply::Rendered, twilio::Kind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::{
    fs, io,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};
use tokio::sync::Notify;

/// One verified webhook, as its route saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unique to this record (its file name); [`Spool::append`] sets it when empty.
    #[serde(default)]
    pub id: String,
    /// Which webhook it is (named `route` on disk, as records have always been written).
    #[serde(rename = "route")]
    pub kind: Kind,
    /// When it arrived: the receive time stored for it, not the replay time.
    pub received_at: DateTime<Utc>,
    /// Twilio's parameters, in order, repeats kept.
    pub params: Vec<(String, String)>,
    /// Our own query parameters (a reply's `reply_to`, `rule`, `part`).
    pub query: Vec<(String, String)>,
    /// The base URL it was verified against, for URLs in replies.
    pub base: String,
    /// What the request was answered with, when it was answered with TwiML (fallback calls);
    /// `None`: answered 503 or 204.
    pub answered: Option<Rendered>,
}

/// A record file that can never be stored as it is.
#[derive(Debug, thiserror::Error)]
#[error("not a spool record: {0}")]
pub struct Unreadable(#[source] serde_json::Error);

/// The spool directory and its bookkeeping.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    failed: PathBuf,
    /// Distinguishes this process's files from another's in the same directory.
    instance: String,
    sequence: AtomicU64,
    appended: Notify,
    metrics: Arc<Metrics>,
}

impl Spool {
    /// Creates the directory if needed and proves it is writable, so a misconfigured spool
    /// fails at start rather than during an outage. Leftover temporary files are removed.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let failed = dir.join("failed");
        fs::create_dir_all(&failed)?;
        for d in [dir, &failed] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        }
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if is_temporary(&path) {
                fs::remove_file(&path)?;
            }
        }
        let probe = dir.join(".tmp-probe");
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let spool = Spool {
            dir: dir.to_owned(),
            failed,
            instance: format!("{:05}{nanos:09}", std::process::id() % 100_000),
            sequence: AtomicU64::new(0),
            appended: Notify::new(),
            metrics,
        };
        let pending = spool.pending()?.len();
        spool.metrics.spool_pending.set(pending as i64);
        if pending > 0 {
            tracing::warn!(pending, dir = %dir.display(), "the spool holds webhooks from an earlier run; storing them once Postgres answers");
        }
        Ok(spool)
    }

    /// A record id, unique in this directory and sorting in arrival order. Taken before a
    /// webhook's first write, so the live attempt and a replay share it.
    pub fn new_id(&self, received_at: DateTime<Utc>) -> String {
        format!(
            "{:020}-{}-{:010}",
            received_at.timestamp_micros().max(0),
            self.instance,
            self.sequence.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Writes `record` durably (under a new id unless it has one); only then may the request
    /// be answered.
    pub async fn append(&self, mut record: Record) -> io::Result<()> {
        if record.id.is_empty() {
            record.id = self.new_id(record.received_at);
        }
        let bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        let name = format!("{}.json", record.id);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, &name, &bytes))
            .await
            .map_err(io::Error::other)??;
        self.metrics.spool_appended.inc();
        self.metrics.spool_pending.inc();
        self.appended.notify_one();
        Ok(())
    }

    /// Completes after the next [`Spool::append`] (or at once if one happened unnoticed).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// The records waiting, oldest first.
    pub fn pending(&self) -> io::Result<Vec<PathBuf>> {
        list(&self.dir)
    }

    /// [`Spool::pending`] off the async threads, and counted in `spool_pending`.
    pub async fn waiting(&self) -> io::Result<Vec<PathBuf>> {
        let dir = self.dir.clone();
        let paths = tokio::task::spawn_blocking(move || list(&dir))
            .await
            .map_err(io::Error::other)??;
        self.metrics.spool_pending.set(paths.len() as i64);
        Ok(paths)
    }

    /// The record in `path`: `Ok(None)` when it is gone (another process sharing the
    /// directory stored it first), `Ok(Err(_))` when it can never be read as a record.
    pub async fn read(&self, path: &Path) -> io::Result<Option<Result<Record, Unreadable>>> {
        let bytes = unless_gone(tokio::fs::read(path).await)?;
        Ok(bytes.map(|bytes| serde_json::from_slice(&bytes).map_err(Unreadable)))
    }

    /// Removes a record once it is stored.
    pub async fn remove(&self, path: &Path) -> io::Result<()> {
        unless_gone(tokio::fs::remove_file(path).await)?;
        self.metrics.spool_replayed.inc();
        self.metrics.spool_pending.dec();
        Ok(())
    }

    /// Moves a record that can never be stored to `failed/`, for an operator.
    pub async fn set_aside(&self, path: &Path, reason: &str) {
        let target = self.failed.join(path.file_name().unwrap_or_default());
        match tokio::fs::rename(path, &target).await {
            Ok(()) => {
                self.metrics.spool_set_aside.inc();
                self.metrics.spool_pending.dec();
                tracing::error!(file = %target.display(), %reason, "a spooled webhook could not be stored; moved aside for an operator");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), %reason, error = %e, "a spooled webhook could not be stored nor moved aside");
            }
        }
    }
}

/// Deletes the records (waiting or set aside) of webhooks from or to `contact`, for
/// `erase --contact`; returns how many. A missing directory holds none.
pub fn erase_contact(dir: &Path, contact: &str) -> io::Result<usize> {
    let mut erased = 0;
    for folder in [dir.to_owned(), dir.join("failed")] {
        let Some(paths) = unless_gone(list(&folder))? else {
            continue;
        };
        for path in paths {
            let Some(bytes) = unless_gone(fs::read(&path))? else {
                continue;
            };
            let about_contact = match serde_json::from_slice::<Record>(&bytes) {
                Ok(record) => record
                    .params
                    .iter()
                    .any(|(k, v)| (k == "From" || k == "To") && v == contact),
                // Unreadable: erase it if the address appears anywhere in it.
                Err(_) => {
                    let needle = serde_json::to_string(contact).unwrap_or_default();
                    let needle = needle.trim_matches('"').as_bytes();
                    bytes.windows(needle.len().max(1)).any(|w| w == needle)
                }
            };
            if about_contact && unless_gone(fs::remove_file(&path))?.is_some() {
                erased += 1;
            }
        }
    }
    Ok(erased)
}

/// The records in `dir`, oldest first.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !is_temporary(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// `Ok(None)` for a file or directory that is not there (gone, or never made).
fn unless_gone<T>(result: io::Result<T>) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp-"))
}

/// Temporary file, fsync, rename, fsync the directory: after this returns the record
/// survives a crash or power loss, and no reader ever sees half of it.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = dir.join(format!(".tmp-{name}"));
    // Owner only: records hold phone numbers and message text.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, sid: &str, at: DateTime<Utc>) -> Record {
        Record {
            id: String::new(),
            kind,
            received_at: at,
            params: vec![
                ("MessageSid".into(), sid.into()),
                ("Body".into(), "a\u{0}b".into()),
                ("Body".into(), "repeat".into()),
            ],
            query: vec![],
            base: "https://hooks.example.test".into(),
            answered: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "twilio-receiver-spool-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn records_are_listed_in_arrival_order_and_read_back_unchanged() {
        let dir = scratch("order");
        let spool = Spool::open(&dir, Arc::new(Metrics::new())).unwrap();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let later = record(Kind::Status, "SM2", t0 + chrono::Duration::seconds(1));
        let earlier = record(Kind::Inbound, "SM1", t0);
        spool.append(later.clone()).await.unwrap();
        spool.append(earlier.clone()).await.unwrap();
        let paths = spool.pending().unwrap();
        let mut read: Vec<Record> = paths
            .iter()
            .map(|p| serde_json::from_slice(&fs::read(p).unwrap()).unwrap())
            .collect();
        for (record, path) in read.iter_mut().zip(&paths) {
            assert_eq!(
                Some(record.id.as_str()),
                path.file_stem().and_then(|s| s.to_str())
            );
            record.id.clear();
        }
        assert_eq!(read, vec![earlier, later]);
        // Records hold phone numbers and text: the server's user only.
        use std::os::unix::fs::PermissionsExt;
        for path in &paths {
            assert_eq!(
                fs::metadata(path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn leftover_temporary_files_are_removed_at_open_and_never_listed() {
        let dir = scratch("tmp");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(".tmp-00000000000000000001-x-0000000000.json"),
            b"{half",
        )
        .unwrap();
        let spool = Spool::open(&dir, Arc::new(Metrics::new())).unwrap();
        assert!(spool.pending().unwrap().is_empty());
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "only failed/ is left"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_fails_at_open() {
        let err = Spool::open(
            Path::new("/proc/twilio-receiver-spool"),
            Arc::new(Metrics::new()),
        );
        assert!(err.is_err());
    }
}
