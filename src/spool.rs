//! The local spool: verified webhooks kept on disk while Postgres is unavailable, and replayed
//! into it when it answers again.
//!
//! Invariant: a request is answered only after its record is durable. A record is written to
//! a temporary file, fsynced, renamed into place and the directory fsynced; a crash before the
//! rename leaves only a temporary file, which was never acknowledged and is removed at start.
//! Replay stores records in the order they arrived and removes each only after its
//! transaction committed, so a crash during replay stores a record at most twice, and storing
//! is idempotent (the same SIDs arrive from Twilio again anyway). A record that cannot be read
//! or stored for a reason other than the database being away is moved to `failed/` and logged,
//! so one bad file never blocks the rest.
//!
//! Files are named `<receive time in µs>-<instance>-<sequence>.json`, so a directory listing
//! sorted by name is the arrival order.

use crate::{
    error::AppError,
    metrics::Metrics,
    routes::{AppState, inbound},
    store::{self, StoreError},
    twilio::{InboundMessage, Params, ReplyLink, StatusCallback},
};
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
    time::Duration,
};
use tokio::sync::{Notify, watch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which route received the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Inbound,
    Fallback,
    Status,
}

/// What the request was answered with, when it was answered with TwiML (fallback calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub twiml: String,
    pub bodies: Vec<String>,
}

/// One verified webhook, as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unique to this record (its file name); [`Spool::append`] sets it when empty.
    #[serde(default)]
    pub id: String,
    pub route: Route,
    /// When it arrived: the receive time stored for it, not the replay time.
    pub received_at: DateTime<Utc>,
    /// Twilio's parameters, in order, repeats kept.
    pub params: Vec<(String, String)>,
    /// Our own query parameters (a reply's `reply_to`, `rule`, `part`).
    pub query: Vec<(String, String)>,
    /// The base URL it was verified against, for URLs in replies.
    pub base: String,
    pub answered: Option<Answered>,
}

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

    /// A record id, unique in this directory and sorting in arrival order. A handler takes
    /// one before its first write, so the live attempt and a replay share it.
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

    /// The records waiting, oldest first.
    pub fn pending(&self) -> io::Result<Vec<PathBuf>> {
        list(&self.dir)
    }

    /// Stores every waiting record, oldest first, until `stop` turns true. Stops at the
    /// first record the database did not take for a reason that may pass (unavailable, too
    /// slow, an unexpected database error) and returns that error; a record that can never
    /// be stored (unreadable, unparsable, too large) is set aside and the rest go on.
    pub async fn replay_pending(
        &self,
        state: &AppState,
        stop: &watch::Receiver<bool>,
    ) -> Result<usize, BoxError> {
        let spool = self.dir.clone();
        let paths = tokio::task::spawn_blocking(move || list(&spool)).await??;
        self.metrics.spool_pending.set(paths.len() as i64);
        let mut stored = 0;
        for path in paths {
            if *stop.borrow() {
                break;
            }
            let record = match tokio::fs::read(&path).await {
                Ok(bytes) => serde_json::from_slice::<Record>(&bytes),
                // Gone: another process sharing the directory stored it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    self.set_aside(&path, &format!("not a spool record: {e}"))
                        .await;
                    continue;
                }
            };
            // The same bound as a live request: a database that stops answering mid-replay
            // must not hold the replay (or a shutdown) forever.
            let outcome =
                tokio::time::timeout(state.database_deadline, store_record(state, &record))
                    .await
                    .unwrap_or(Err(AppError::DatabaseTooSlow));
            match outcome {
                Ok(()) => {
                    match tokio::fs::remove_file(&path).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                    stored += 1;
                    self.metrics.spool_replayed.inc();
                    self.metrics.spool_pending.dec();
                }
                Err(
                    e @ (AppError::MissingParam(_)
                    | AppError::Store(StoreError::TooLarge(_))
                    | AppError::Rejected(_)),
                ) => self.set_aside(&path, &e.to_string()).await,
                Err(e) => {
                    if let AppError::Store(StoreError::Other(sqlx::Error::Database(db))) = &e {
                        tracing::error!(sqlstate = ?db.code(), file = %path.display(), "a spooled webhook could not be stored; retrying later");
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(stored)
    }

    async fn set_aside(&self, path: &Path, reason: &str) {
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

    /// Replays in the background until `stop` turns true: at start, after each append, every
    /// few seconds, and with a growing pause while the database stays away.
    pub async fn run(self: Arc<Self>, state: AppState, mut stop: watch::Receiver<bool>) {
        const IDLE: Duration = Duration::from_secs(5);
        let mut pause = Duration::ZERO;
        loop {
            if !pause.is_zero() {
                // Appends during an outage must not turn into one connection attempt each.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            match self.replay_pending(&state, &stop).await {
                Ok(0) => pause = Duration::ZERO,
                Ok(stored) => {
                    pause = Duration::ZERO;
                    tracing::info!(
                        stored,
                        pending = self.metrics.spool_pending.get(),
                        "stored spooled webhooks in Postgres"
                    );
                    continue;
                }
                Err(e) => {
                    pause = (pause * 2).clamp(Duration::from_millis(250), IDLE);
                    tracing::debug!(error = %e, ?pause, "spool replay waits for the database");
                    continue;
                }
            }
            tokio::select! {
                _ = self.appended.notified() => {}
                _ = tokio::time::sleep(IDLE) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Stores one record exactly as its route would have, with its original receive time.
async fn store_record(state: &AppState, record: &Record) -> Result<(), AppError> {
    let params: Params = record.params.iter().cloned().collect();
    match record.route {
        Route::Status => {
            state.ensure_schema()?;
            let callback = StatusCallback::parse(&params)?;
            let query: Params = record.query.iter().cloned().collect();
            let link = ReplyLink::from_query(&query);
            let recorded = store::status::record(
                &state.db,
                &callback,
                link.as_ref(),
                params.to_json(),
                record.received_at,
            )
            .await?;
            if recorded.new_event {
                state.notifier.send("status", &callback.sid);
            }
        }
        Route::Inbound | Route::Fallback => {
            let msg = InboundMessage::parse(&params)?;
            let failure = (record.route == Route::Fallback).then(|| inbound::failure(&params));
            inbound::store(
                state,
                inbound::Arrival {
                    params: &params,
                    base: &record.base,
                    at: record.received_at,
                    answer: inbound::Answer::Given(record.answered.as_ref()),
                    spool_record: Some(&record.id),
                },
                &msg,
                failure.as_ref(),
            )
            .await?;
        }
    }
    Ok(())
}

/// Deletes the records (waiting or set aside) of webhooks from or to `contact`, for
/// `erase --contact`; returns how many. A missing directory holds none.
pub fn erase_contact(dir: &Path, contact: &str) -> io::Result<usize> {
    let mut erased = 0;
    for folder in [dir.to_owned(), dir.join("failed")] {
        let paths = match list(&folder) {
            Ok(paths) => paths,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for path in paths {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
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
            if about_contact {
                match fs::remove_file(&path) {
                    Ok(()) => erased += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
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

    fn record(route: Route, sid: &str, at: DateTime<Utc>) -> Record {
        Record {
            id: String::new(),
            route,
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
        let later = record(Route::Status, "SM2", t0 + chrono::Duration::seconds(1));
        let earlier = record(Route::Inbound, "SM1", t0);
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
