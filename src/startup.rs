//! Building and running the server: settings in, a bound listener and a router out, run until
//! an injected shutdown future completes (tests pass their own; `serve` passes
//! [`shutdown_signal`]).

use crate::{
    config::{DatabaseSettings, PublicBase, Settings},
    ingest::{self, Clock, Grouping, Ingest},
    media::Archiver,
    metrics::Metrics,
    reconcile::Reconciler,
    reply::Replier,
    routes::{self, AppState, Signing},
    rules::Rules,
    spool::Spool,
    store,
};
use axum::Router;
use sqlx::PgPool;
use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// What the state is built around besides settings: tests pass their own clock, and
/// `Application::build` a schema gate that opens once migrations are applied.
pub struct Wiring {
    pub clock: Clock,
    /// `true` once migrations are applied; whoever passes `true` vouches for the schema.
    pub schema_ready: watch::Receiver<bool>,
}

impl Default for Wiring {
    fn default() -> Self {
        Wiring {
            clock: Clock::system(),
            schema_ready: watch::channel(true).1,
        }
    }
}

/// The state handlers share, built from settings around an existing pool; starts the
/// writer tasks on the current runtime.
pub fn app_state(
    settings: &Settings,
    db: PgPool,
    wiring: Wiring,
) -> Result<AppState, StartupError> {
    let problems = settings.problems();
    if !problems.is_empty() {
        return Err(StartupError::Config(problems));
    }
    let rules = settings.load_rules().map_err(StartupError::Config)?;
    let base = settings
        .server
        .public_base()
        .map_err(|e| StartupError::Config(vec![e]))?;
    let metrics = Arc::new(Metrics::new());
    let replier = replier(settings, rules);
    let spool = settings
        .spool
        .dir()
        .map(|dir| {
            Spool::open(&dir, metrics.clone())
                .map(Arc::new)
                .map_err(|e| {
                    StartupError::Config(vec![format!(
                        "spool.dir: {} is not a usable directory ({e}); point it at a writable \
                     volume, or set it to \"\" to run without a spool",
                        dir.display()
                    )])
                })
        })
        .transpose()?;
    let ingest = ingest(settings, db, wiring, metrics.clone(), replier, spool);
    Ok(AppState {
        signing: Arc::new(Signing {
            verifier: settings.verifier(),
            base,
            body_limit: settings.server.body_limit_bytes,
            body_read_timeout: settings.server.body_read_timeout(),
            basic_auth: settings.server.basic_auth.header(),
            probes: Default::default(),
        }),
        ingest: Arc::new(ingest),
        in_flight: Arc::new(tokio::sync::Semaphore::new(
            settings.server.max_concurrent_requests,
        )),
        metrics,
    })
}

fn replier(settings: &Settings, rules: Rules) -> Arc<Replier> {
    Arc::new(Replier::new(
        rules,
        settings.default_reply(),
        settings.fallback_reply(),
        settings.reply.track_delivery,
    ))
}

fn ingest(
    settings: &Settings,
    db: PgPool,
    wiring: Wiring,
    metrics: Arc<Metrics>,
    replier: Arc<Replier>,
    spool: Option<Arc<Spool>>,
) -> Ingest {
    Ingest::start(ingest::Parts {
        notifier: store::notify::Notifier::spawn(db.clone()),
        db,
        replier,
        metrics,
        spool,
        clock: wiring.clock,
        schema_ready: wiring.schema_ready,
        // Leaves a quarter of the request deadline to answer before the timeout layer's 503.
        deadline: settings.server.request_timeout() * 3 / 4,
        archive_media: settings.media.archive,
        enrich: settings.reconcile.enabled,
        grouping: settings.database.group_commit.then_some(Grouping {
            writers: settings.database.group_writers,
            size: settings.database.group_size,
        }),
    })
}

/// The reconciler over `ingest`, with its own REST client (`twilio.*`).
pub fn reconciler(
    settings: &Settings,
    ingest: Arc<Ingest>,
    metrics: Arc<Metrics>,
    db: PgPool,
) -> Result<Arc<Reconciler>, String> {
    let rest = crate::rest::RestSettings::from_settings(settings)?;
    let client = crate::rest::RestClient::new(rest, metrics.clone())?;
    Ok(Arc::new(Reconciler::new(
        ingest,
        client,
        db,
        metrics,
        settings.reconcile.clone(),
    )))
}

/// A reconciler for a command (`backfill`): ingest without HTTP and without the spool (the
/// server's, if one runs, is its own), over `db`.
pub fn standalone_reconciler(settings: &Settings, db: PgPool) -> Result<Arc<Reconciler>, String> {
    let rules = settings.load_rules().map_err(|p| p.join("; "))?;
    let metrics = Arc::new(Metrics::new());
    let replier = replier(settings, rules);
    let ingest = ingest(
        settings,
        db.clone(),
        Wiring::default(),
        metrics.clone(),
        replier,
        None,
    );
    reconciler(settings, Arc::new(ingest), metrics, db)
}

/// The archive's settings: media found through the API (reconcile, backfill) is on the API's
/// host, which the archive then trusts with credentials like the hosts in
/// `media.credential_hosts`.
fn archive_settings(settings: &Settings) -> crate::config::MediaSettings {
    let mut media = settings.media.clone();
    if let Some(host) = url::Url::parse(&settings.twilio.api_base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        && !media.credential_hosts.contains(&host)
    {
        media.credential_hosts.push(host);
    }
    media
}

/// Retries migrations with capped exponential backoff until Postgres answers, then opens the
/// gate. A migration that fails for any other reason is logged and leaves the server unready.
async fn migrate_when_reachable(settings: DatabaseSettings, ready: watch::Sender<bool>) {
    let mut delay = Duration::from_millis(250);
    loop {
        tokio::time::sleep(delay).await;
        match store::migrate(&settings).await {
            Ok(()) => {
                tracing::info!("Postgres is back: migrations applied, accepting webhooks");
                ready.send_replace(true);
                return;
            }
            Err(e) if store::migration_unavailable(&e) => {
                tracing::debug!(error = %e, "Postgres still unreachable");
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(error = %e, "migrations failed; webhooks keep answering 503");
                return;
            }
        }
    }
}

/// A server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    admin_listener: TcpListener,
    admin_router: Router,
    schema_ready: watch::Receiver<bool>,
    replier: Arc<Replier>,
    rules_file: (PathBuf, bool),
    archiver: Option<Archiver>,
    /// Reads Twilio's API in the background (`reconcile.enabled`).
    reconciler: Option<Arc<Reconciler>>,
    /// Makes the coming days' partitions.
    upkeep: crate::upkeep::Upkeep,
    /// Replays the spool in the background; flushes the last notifications at shutdown.
    ingest: Arc<Ingest>,
    http: HttpLimits,
    /// Registered while building, so a SIGHUP during start-up (migrations) is queued rather
    /// than taking its default action, which would end the process.
    #[cfg(unix)]
    hangups: Option<tokio::signal::unix::Signal>,
}

/// The longest a shutdown (or a command that stored messages) waits for the last
/// notifications to go out.
pub const NOTIFY_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Application {
    /// Validates settings, connects (lazily), migrates when configured, binds the listener.
    pub async fn build(settings: &Settings) -> Result<Self, StartupError> {
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(StartupError::Config(problems));
        }
        let db = store::pool(&settings.database).map_err(|e| StartupError::Config(vec![e]))?;
        let (ready_tx, ready_rx) = watch::channel(!settings.database.migrate_on_start);
        if settings.database.migrate_on_start {
            match store::migrate(&settings.database).await {
                Ok(()) => {
                    ready_tx.send_replace(true);
                }
                // Postgres down at start: serve anyway (webhooks get 503, so Twilio uses the
                // fallback URL) and migrate as soon as it answers.
                Err(e) if store::migration_unavailable(&e) => {
                    tracing::warn!(error = %e, "Postgres is unreachable: answering 503 and retrying migrations in the background");
                    tokio::spawn(migrate_when_reachable(settings.database.clone(), ready_tx));
                }
                Err(e) => return Err(StartupError::Migrate(e)),
            }
        }
        let wiring = Wiring {
            clock: Clock::system(),
            schema_ready: ready_rx.clone(),
        };
        let state = app_state(settings, db.clone(), wiring)?;
        let archiver = settings
            .media
            .archive
            .then(|| Archiver::new(db.clone(), archive_settings(settings), settings.verifier()))
            .transpose()
            .map_err(|e| StartupError::Config(vec![format!("media.storage: {e}")]))?;
        let reconciler = settings
            .reconcile
            .enabled
            .then(|| {
                reconciler(
                    settings,
                    state.ingest.clone(),
                    state.metrics.clone(),
                    db.clone(),
                )
            })
            .transpose()
            .map_err(|e| StartupError::Config(vec![e]))?;
        warn_about_risky_settings(settings, &state);
        let addr = settings
            .server
            .listen_addr()
            .map_err(|e| StartupError::Config(vec![e]))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let admin_addr = settings
            .server
            .admin_addr()
            .map_err(|e| StartupError::Config(vec![e]))?;
        let admin_listener =
            TcpListener::bind(admin_addr)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: admin_addr,
                    source,
                })?;
        Ok(Application {
            listener,
            admin_listener,
            upkeep: crate::upkeep::Upkeep {
                db: db.clone(),
                metrics: state.metrics.clone(),
                ahead: settings.database.partition_days_ahead,
            },
            admin_router: routes::admin_router(state.metrics.clone(), db),
            replier: state.ingest.replier().clone(),
            ingest: state.ingest.clone(),
            http: HttpLimits::from_settings(settings),
            router: routes::router(state, settings.server.request_timeout()),
            schema_ready: ready_rx,
            rules_file: settings.rules_file(),
            archiver,
            reconciler,
            #[cfg(unix)]
            hangups: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        })
    }

    /// The port of the admin listener (`/metrics`).
    pub fn admin_port(&self) -> u16 {
        self.admin_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The router, for driving the application without a socket.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Becomes `true` once migrations are applied.
    pub fn schema_ready(&self) -> watch::Receiver<bool> {
        self.schema_ready.clone()
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        #[cfg(unix)]
        let reloader = self.hangups.map(|hangups| {
            tokio::spawn(reload_rules_on_sighup(
                hangups,
                self.replier.clone(),
                self.rules_file.clone(),
            ))
        });
        let (stop_workers, workers_stop) = watch::channel(false);
        let mut workers = self
            .archiver
            .map(|a| a.spawn(workers_stop.clone()))
            .unwrap_or_default();
        workers.push(tokio::spawn(
            self.upkeep
                .run_until_stopped(self.schema_ready.clone(), workers_stop.clone()),
        ));
        if let Some(reconciler) = self.reconciler {
            workers.push(tokio::spawn(
                reconciler.run_until_stopped(workers_stop.clone()),
            ));
        }
        if self.ingest.spool().is_some() {
            workers.push(tokio::spawn(
                self.ingest.clone().replay_until_stopped(workers_stop),
            ));
        }
        // One shutdown signal for both listeners.
        let (stopping, stop) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            stopping.send_replace(true);
        });
        let wait = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tracing::info!(addr = %self.admin_listener.local_addr()?, "admin listening (/metrics)");
        // The same loop and limits as the public listener, so a stuck scraper cannot hold
        // the shutdown either.
        let admin_limits = self.http.clone();
        let admin_stop = wait(stop.clone());
        let admin = tokio::spawn(async move {
            serve(
                self.admin_listener,
                self.admin_router,
                &admin_limits,
                admin_stop,
            )
            .await
        });
        tracing::info!(addr = %self.listener.local_addr()?, "listening");
        let served = serve(self.listener, self.router, &self.http, wait(stop)).await;
        let _ = admin.await;
        #[cfg(unix)]
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        // Workers finish the item in hand; one cut short is retried after its lease. The
        // spool replay stops between records (each bounded by the database deadline); the
        // rest waits on disk for the next start.
        stop_workers.send_replace(true);
        for worker in workers {
            let _ = worker.await;
        }
        self.ingest.notifier().flush(NOTIFY_FLUSH_LIMIT).await;
        served
    }
}

/// What the connection loop enforces (`server.*`).
#[derive(Debug, Clone)]
struct HttpLimits {
    max_connections: usize,
    header_read_timeout: Duration,
    max_header_bytes: usize,
    shutdown_grace: Duration,
}

impl HttpLimits {
    fn from_settings(settings: &Settings) -> Self {
        HttpLimits {
            max_connections: settings.server.max_connections,
            header_read_timeout: settings.server.header_read_timeout(),
            max_header_bytes: settings.server.max_header_bytes,
            shutdown_grace: settings.server.shutdown_grace(),
        }
    }
}

/// Accepts connections until `stop`, then stops accepting and gives in-flight requests up to
/// the grace period. Replaces `axum::serve`, which has no header-read timer (a client
/// trickling headers would hold its socket forever), no limit on header size (431), and
/// waits for open connections without bound.
async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let service = hyper_util::service::TowerToHyperService::new(router);
    // At the cap, new connections wait in the kernel's backlog instead of using up file
    // descriptors (each open one is bounded in time by the header read timeout).
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        let (slot, stream) = tokio::select! {
            accepted = async {
                let slot = slots.clone().acquire_owned().await;
                (slot, listener.accept().await)
            } => match accepted {
                (Ok(slot), Ok((stream, _))) => (slot, stream),
                (_, Err(e)) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                (Err(_), _) => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let connection =
            connections.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tasks.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // No new connections from here; idle keep-alive connections close, busy ones finish
    // their request first.
    drop(listener);
    let open = connections.count();
    tokio::select! {
        () = connections.shutdown() => {
            tracing::info!(connections = open, "in-flight requests finished");
        }
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "grace period over: closing the remaining connections; their requests were not answered");
            tasks.abort_all();
        }
    }
    Ok(())
}

/// `SIGHUP` reloads the rules file atomically; a file with problems keeps the rules in force.
#[cfg(unix)]
async fn reload_rules_on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    replier: Arc<Replier>,
    (path, required): (PathBuf, bool),
) {
    while hangups.recv().await.is_some() {
        match Rules::load_file(&path, required) {
            Ok(rules) => {
                let count = rules.len();
                replier.replace_rules(rules);
                tracing::info!(rules = count, path = %path.display(), "rules reloaded");
            }
            Err(problems) => tracing::error!(
                problems = %problems.join("; "),
                "rules file has problems; keeping the previous rules"
            ),
        }
    }
}

fn warn_about_risky_settings(settings: &Settings, state: &AppState) {
    let (rules_path, required) = settings.rules_file();
    if !required && !rules_path.exists() {
        tracing::warn!(
            path = %rules_path.display(),
            "no rules file: inbound messages get reply.body or an empty answer"
        );
    } else {
        tracing::info!(rules = state.ingest.replier().rules().len(), path = %rules_path.display(), "rules loaded");
    }
    if !settings.twilio.verify_signatures {
        tracing::warn!(
            "twilio.verify_signatures is false: requests are NOT verified and anyone can write \
             to the database. Never run like this in production."
        );
    }
    if state.signing.base == PublicBase::Host {
        tracing::warn!(
            "server.public_url is not set: signatures are checked against http:// + the Host \
             header, which fails behind a TLS proxy. Set server.public_url to the URL Twilio calls."
        );
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
