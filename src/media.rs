//! The media archive: background workers that download each queued inbound media item from
//! Twilio and store it where the business says (`media.storage`).
//!
//! Safety rules, in order: a MediaUrl whose host is not in `media.credential_hosts` is never
//! requested (refused); credentials (Basic auth: AccountSid and that account's token) go to
//! the first hop only; redirects are followed by hand, https only, to `media.redirect_hosts`;
//! bodies are streamed to storage with a size cap and a deadline, never held whole in memory.

use crate::{
    config::MediaSettings,
    store::{
        self, StoreError,
        media::{Job, Outcome},
    },
    twilio::Verifier,
};
use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart, path::Path as ObjectPath};
use reqwest::header::LOCATION;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, task::JoinHandle};
use url::Url;

/// How many redirects a download may follow.
const MAX_REDIRECTS: usize = 5;
/// How long past media.timeout_ms a download may take to delete its partial file.
const CLEAN_UP: Duration = Duration::from_secs(5);
/// How long an idle worker waits before looking for due jobs again.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The first and the longest wait between attempts to record an outcome while the database
/// is away.
const FINISH_RETRY: Duration = Duration::from_millis(100);
const MAX_FINISH_RETRY: Duration = Duration::from_secs(2);

/// Downloads queued media and stores it.
pub struct Archiver {
    db: PgPool,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    part_size: usize,
    client: reqwest::Client,
    verifier: Verifier,
    settings: MediaSettings,
}

impl Archiver {
    pub fn new(db: PgPool, settings: MediaSettings, verifier: Verifier) -> Result<Self, String> {
        let storage = crate::storage::open(&settings.storage)?;
        Self::with_storage(db, settings, verifier, storage)
    }

    /// An archiver writing to `storage` (see [`crate::storage::open_with_options`]).
    pub fn with_storage(
        db: PgPool,
        settings: MediaSettings,
        verifier: Verifier,
        (store, prefix): (Arc<dyn ObjectStore>, ObjectPath),
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            // Redirects are followed by hand: credentials must not follow them.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        // S3 multipart parts must be at least 5 MiB; a local file takes any size.
        let part_size = if store.to_string().starts_with("LocalFileSystem") {
            256 * 1024
        } else {
            5 * 1024 * 1024
        };
        Ok(Archiver {
            db,
            store,
            prefix,
            part_size,
            client,
            verifier,
            settings,
        })
    }

    /// Starts `media.workers` workers; they stop when `stop` turns true, finishing the item in
    /// hand (an unfinished one is retried after its lease).
    pub fn spawn(self, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let archiver = Arc::new(self);
        (0..archiver.settings.workers.max(1))
            .map(|_| {
                let archiver = archiver.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    while !*stop.borrow() {
                        let mut stopping = stop.clone();
                        let worked = archiver
                            .run_once_until(async move {
                                let _ = stopping.wait_for(|s| *s).await;
                            })
                            .await;
                        if !worked {
                            tokio::select! {
                                _ = stop.changed() => {}
                                () = tokio::time::sleep(IDLE_POLL) => {}
                            }
                        }
                    }
                })
            })
            .collect()
    }

    /// Claims and processes one due job; `false` when there was none (or the database is
    /// away).
    pub async fn run_once(&self) -> bool {
        self.run_once_until(std::future::pending()).await
    }

    /// [`Archiver::run_once`], abandoning the job in hand when `stop` completes: the upload
    /// is dropped (no partial file is kept) and the job is released without using up an
    /// attempt, so the next start picks it up at once.
    async fn run_once_until(&self, stop: impl std::future::Future<Output = ()>) -> bool {
        let deadline = Duration::from_millis(self.settings.timeout_ms);
        // The lease outlasts the whole attempt (deadline and clean-up included), so no other
        // worker can take the job over while this one still works on it.
        let lease = deadline + Duration::from_secs(30);
        let claimed_at = tokio::time::Instant::now();
        let job = match store::media::claim(&self.db, lease).await {
            Ok(Some(job)) => job,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "media archive: cannot claim a job");
                return false;
            }
        };
        tokio::pin!(stop);
        let outcome = tokio::select! {
            // The download keeps the deadline itself, so that it can delete its partial
            // file (dropped, an upload deletes it only later, in the background); this one
            // is the backstop should the storage hang.
            outcome = tokio::time::timeout(deadline + CLEAN_UP, self.archive(&job, claimed_at + deadline))
                => outcome.unwrap_or_else(|_| self.retry_or_give_up(&job, self.late())),
            () = &mut stop => Outcome::Released,
        };
        match &outcome {
            Outcome::Stored { bytes, .. } => {
                tracing::info!(message_sid = %job.message_sid, index = job.index, bytes, "archived media")
            }
            Outcome::Retry { error, after, .. } => tracing::warn!(
                message_sid = %job.message_sid, index = job.index, attempt = job.attempt,
                error = %error, retry_in_ms = after.as_millis() as u64, "media download failed; will retry"
            ),
            Outcome::Released => {
                tracing::info!(message_sid = %job.message_sid, index = job.index, "shutting down: media job released")
            }
            Outcome::Failed { error } | Outcome::Refused { error } => tracing::error!(
                message_sid = %job.message_sid, index = job.index, error = %error, "media not archived"
            ),
        }
        // With the database away (a restart), the job would stay leased, its photo stored but
        // not recorded, until the lease runs out: try again until it answers, while the
        // lease holds and no shutdown is asked for. (Released means the shutdown came.)
        let lease_ends = claimed_at + lease;
        let mut wait = FINISH_RETRY;
        loop {
            match store::media::finish(&self.db, &job, &outcome).await {
                Ok(()) => break,
                Err(StoreError::Unavailable(e))
                    if !matches!(outcome, Outcome::Released)
                        && tokio::time::Instant::now() + wait < lease_ends =>
                {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "media archive: cannot record the outcome; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut stop => break,
                    }
                    wait = (wait * 2).min(MAX_FINISH_RETRY);
                }
                Err(e) => {
                    // The lease runs out and another attempt happens: nothing is lost.
                    tracing::warn!(error = %e, "media archive: cannot record the outcome");
                    break;
                }
            }
        }
        true
    }

    async fn archive(&self, job: &Job, deadline: tokio::time::Instant) -> Outcome {
        match self.download(job, deadline).await {
            Ok(stored) => stored,
            Err(Failure::Refused(error)) => Outcome::Refused { error },
            Err(Failure::Permanent(error)) => Outcome::Failed { error },
            Err(Failure::Transient(error)) => self.retry_or_give_up(job, error),
            // Our own storage failing says nothing about the media: retry without using up
            // an attempt, so an outage of the bucket or disk never gives items up.
            Err(Failure::Storage(error)) => self.retry(job, error, false),
        }
    }

    fn retry_or_give_up(&self, job: &Job, error: String) -> Outcome {
        if job.attempt < self.settings.max_attempts {
            self.retry(job, error, true)
        } else {
            Outcome::Failed {
                error: format!("gave up after {} attempts: {error}", job.attempt),
            }
        }
    }

    async fn download(
        &self,
        job: &Job,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, Failure> {
        let response = tokio::time::timeout_at(deadline, self.fetch(job))
            .await
            .map_err(|_| Failure::Transient(self.late()))??;
        self.keep(job, response, deadline).await
    }

    /// The error of an attempt still unfinished at its deadline.
    fn late(&self) -> String {
        format!(
            "not finished within media.timeout_ms ({} ms)",
            self.settings.timeout_ms
        )
    }

    fn retry(&self, job: &Job, error: String, counts: bool) -> Outcome {
        let base = self.settings.retry_base_ms;
        let after = backoff(base, job.attempt, &job.message_sid, job.index);
        Outcome::Retry {
            error,
            after,
            counts,
        }
    }

    /// The media's response, credentials sent to the first (allowed) host only, redirects
    /// followed by hand to allowed hosts; anything but a success is a failure.
    async fn fetch(&self, job: &Job) -> Result<reqwest::Response, Failure> {
        let mut url =
            Url::parse(&job.url).map_err(|e| Failure::Refused(format!("not a URL: {e}")))?;
        if !self.allowed(&url, &self.settings.credential_hosts) {
            return Err(Failure::Refused(format!(
                "MediaUrl host {:?} is not in media.credential_hosts",
                url.host_str().unwrap_or_default()
            )));
        }
        let token = self
            .verifier
            .tokens_for(Some(&job.account_sid))
            .first()
            .map(|t| t.expose_secret().to_owned());
        let mut request = self
            .client
            .get(url.clone())
            .basic_auth(&job.account_sid, token);
        let mut response = None;
        for _ in 0..=MAX_REDIRECTS {
            let r = request
                .send()
                .await
                .map_err(|e| Failure::Transient(crate::rest::describe(&e)))?;
            if !r.status().is_redirection() {
                response = Some(r);
                break;
            }
            let location = r
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    Failure::Permanent(format!("redirect ({}) without a Location", r.status()))
                })?;
            url = url
                .join(location)
                .map_err(|e| Failure::Permanent(format!("bad redirect Location: {e}")))?;
            if !self.allowed(&url, &self.settings.redirect_hosts) {
                return Err(Failure::Refused(format!(
                    "redirect to host {:?}, which is not in media.redirect_hosts",
                    url.host_str().unwrap_or_default()
                )));
            }
            // Past the first hop: no credentials.
            request = self.client.get(url.clone());
        }
        let response = response.ok_or_else(|| Failure::Permanent("too many redirects".into()))?;
        let status = response.status();
        if !status.is_success() {
            let error = format!("HTTP {status}");
            // 404 right after receipt (not there yet) and 401/403 (a token being rotated)
            // can heal; they are given up after media.max_attempts.
            return Err(match status.as_u16() {
                401 | 403 | 404 | 408 | 429 | 500..=599 => Failure::Transient(error),
                _ => Failure::Permanent(error),
            });
        }
        Ok(response)
    }

    /// Streams `response` into storage, at most `media.max_bytes`, hashing as it goes, until
    /// `deadline`.
    async fn keep(
        &self,
        job: &Job,
        response: reqwest::Response,
        deadline: tokio::time::Instant,
    ) -> Result<Outcome, Failure> {
        let max = self.settings.max_bytes;
        let too_large = || Failure::Permanent(format!("larger than media.max_bytes ({max})"));
        if response.content_length().is_some_and(|len| len > max) {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);

        let key = self
            .prefix
            .clone()
            .join(job.message_sid.as_str())
            .join(job.index.to_string());
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(|e| Failure::Storage(format!("storage: {e}")))?;
        // At most one part in memory: small parts for a local directory, S3's 5 MiB minimum
        // for buckets.
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut hasher = Sha256::new();
        let mut bytes: u64 = 0;
        let mut body = response.bytes_stream();
        loop {
            let failure = match tokio::time::timeout_at(deadline, body.next()).await {
                Ok(None) => break,
                Err(_) => Failure::Transient(self.late()),
                Ok(Some(Err(e))) => Failure::Transient(crate::rest::describe(&e)),
                Ok(Some(Ok(chunk))) if bytes + chunk.len() as u64 > max => too_large(),
                Ok(Some(Ok(chunk))) => {
                    bytes += chunk.len() as u64;
                    hasher.update(&chunk);
                    writer.write(&chunk);
                    continue;
                }
            };
            let _ = writer.abort().await;
            return Err(failure);
        }
        writer
            .finish()
            .await
            .map_err(|e| Failure::Storage(format!("storage: {e}")))?;
        Ok(Outcome::Stored {
            key: key.to_string(),
            bytes: bytes as i64,
            sha256: crate::twilio::verify::hex(&hasher.finalize()),
            content_type,
        })
    }

    fn allowed(&self, url: &Url, hosts: &[String]) -> bool {
        url_allowed(url, hosts, self.settings.allow_insecure_loopback)
    }
}

/// https to a listed host (`*.example.com` matches subdomains); plain http only to loopback,
/// and only with `media.allow_insecure_loopback` (tests).
fn url_allowed(url: &Url, hosts: &[String], allow_insecure_loopback: bool) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let scheme_ok = match url.scheme() {
        "https" => true,
        "http" => allow_insecure_loopback && is_loopback(host),
        _ => false,
    };
    scheme_ok && hosts.iter().any(|pattern| host_matches(pattern, host))
}

enum Failure {
    /// The download may work next time (counts as an attempt).
    Transient(String),
    Permanent(String),
    Refused(String),
    /// Writing to our own storage failed (does not count as an attempt).
    Storage(String),
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => host == pattern,
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Exponential backoff from `base_ms`, doubled per attempt, capped, with up to 25 % jitter
/// (derived from the SID, index and attempt, so items failing together retry apart).
fn backoff(base_ms: u64, attempt: i32, sid: &str, index: i32) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << (attempt.clamp(1, 30) - 1));
    let capped = Duration::from_millis(exp).min(MAX_BACKOFF);
    let start = (attempt as u64)
        .wrapping_mul(131)
        .wrapping_add(index as u64);
    let seed = sid
        .bytes()
        .fold(start, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let jitter = capped.mul_f64((seed % 1000) as f64 / 4000.0);
    capped + jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("api.twilio.com", "API.twilio.com"));
        assert!(!host_matches(
            "api.twilio.com",
            "api.twilio.com.evil.example"
        ));
        assert!(host_matches("*.twiliocdn.com", "mms.twiliocdn.com"));
        assert!(!host_matches("*.twiliocdn.com", "twiliocdn.com"));
        assert!(!host_matches("*.twiliocdn.com", "eviltwiliocdn.com"));
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let a1 = backoff(1000, 1, "SM1", 0);
        let a3 = backoff(1000, 3, "SM1", 0);
        assert!(a1 >= Duration::from_millis(1000) && a1 <= Duration::from_millis(1250));
        assert!(a3 >= Duration::from_millis(4000) && a3 <= Duration::from_millis(5000));
        assert!(backoff(1000, 40, "SM1", 0) <= MAX_BACKOFF.mul_f64(1.25));
        assert_ne!(backoff(1000, 2, "SM1", 0), backoff(1000, 2, "SM1", 1));
    }

    #[test]
    fn only_https_reaches_listed_hosts_unless_loopback_http_is_allowed() {
        let hosts = ["api.twilio.com".to_owned(), "127.0.0.1".to_owned()];
        let ok = |u: &str, insecure| url_allowed(&Url::parse(u).unwrap(), &hosts, insecure);
        assert!(ok("https://api.twilio.com/x", false));
        assert!(
            !ok("http://api.twilio.com/x", false),
            "no downgrade to http"
        );
        assert!(
            !ok("http://api.twilio.com/x", true),
            "http only to loopback, even in tests"
        );
        assert!(!ok("http://127.0.0.1/x", false));
        assert!(ok("http://127.0.0.1/x", true));
        assert!(!ok("https://evil.example/x", false));
        assert!(!ok("ftp://api.twilio.com/x", false));
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && is_loopback("[::1]"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("example.com"));
    }
}
