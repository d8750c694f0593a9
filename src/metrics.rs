//! Prometheus metrics, one registry per app (state is passed, never global), rendered in the
//! text format at `GET /metrics`.
//!
//! Counters move as deliveries are handled; gauges that only the database knows for every
//! instance (deferred deletes pending, age of the newest delivery) are read at scrape time.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::db::Database;

/// The daemon's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    deliveries: IntCounterVec,
    rejected: IntCounterVec,
    latency: Histogram,
    pool: IntGaugeVec,
    pool_waiting: IntGauge,
    pending_deletes: IntGauge,
    last_delivery_age: prometheus::Gauge,
    up: IntGauge,
    group_commits: prometheus::IntCounter,
    group_committed: prometheus::IntCounter,
    session_syncs: IntCounterVec,
    session_refusals: IntCounterVec,
    api_requests: IntCounterVec,
    api_latency: prometheus::HistogramVec,
    signing_secrets: IntGauge,
    secret_reloads: IntCounterVec,
    secrets_failing: IntGauge,
    dead_lettered: IntCounterVec,
    dead_letters: IntGauge,
    dead_letter_bytes: IntGauge,
    dead_letters_dropped: prometheus::IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> C {
    // Names are fixed and distinct: registering cannot collide.
    let _ = registry.register(Box::new(collector.clone()));
    collector
}

impl Metrics {
    /// A fresh registry with every series the daemon exports.
    pub fn new() -> Self {
        let registry = Registry::new();
        let deliveries = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "clerk_sync_deliveries_total",
                    "Verified deliveries handled, by event type and outcome.",
                ),
                &["event_type", "outcome"],
            )
            .expect("static metric definition"),
        );
        let rejected = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "clerk_sync_rejected_total",
                    "Deliveries not applied, by reason.",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
        );
        let latency = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "clerk_sync_delivery_duration_seconds",
                    "Time from a delivery's arrival to its answer.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
            )
            .expect("static metric definition"),
        );
        let pool = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "clerk_sync_db_pool_connections",
                    "Database connections open, by state.",
                ),
                &["state"],
            )
            .expect("static metric definition"),
        );
        let pool_waiting = register(
            &registry,
            IntGauge::new(
                "clerk_sync_db_pool_waiting",
                "Requests waiting for a database connection.",
            )
            .expect("static metric definition"),
        );
        let pending_deletes = register(
            &registry,
            IntGauge::new(
                "clerk_sync_deferred_deletes_pending",
                "Deletes the application's foreign keys still refuse (retried in the background).",
            )
            .expect("static metric definition"),
        );
        let last_delivery_age = register(
            &registry,
            prometheus::Gauge::new(
                "clerk_sync_last_delivery_age_seconds",
                "Seconds since the newest delivery any instance received (absent before the first).",
            )
            .expect("static metric definition"),
        );
        let up = register(
            &registry,
            IntGauge::new(
                "clerk_sync_database_up",
                "1 when the last scrape could read the database.",
            )
            .expect("static metric definition"),
        );
        let group_commits = register(
            &registry,
            prometheus::IntCounter::new(
                "clerk_sync_group_commits_total",
                "Transactions that committed several deliveries together (group commit).",
            )
            .expect("static metric definition"),
        );
        let group_committed = register(
            &registry,
            prometheus::IntCounter::new(
                "clerk_sync_group_committed_deliveries_total",
                "Deliveries committed in such shared transactions.",
            )
            .expect("static metric definition"),
        );
        let build = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("clerk_sync_build_info", "clerk-sync's version."),
                &["version"],
            )
            .expect("static metric definition"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let session_syncs = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "clerk_sync_session_syncs_total",
                    "POST /api/auth/sync requests, by outcome.",
                ),
                &["outcome"],
            )
            .expect("static metric definition"),
        );
        let session_refusals = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "clerk_sync_session_refusals_total",
                    "Session syncs refused before any call to Clerk's user API, by reason.",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
        );
        let api_requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "clerk_sync_backend_api_requests_total",
                    "Calls to Clerk's Backend API made by the daemon (retries included in one call), by endpoint and result.",
                ),
                &["endpoint", "result"],
            )
            .expect("static metric definition"),
        );
        let api_latency = register(
            &registry,
            prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "clerk_sync_backend_api_duration_seconds",
                    "Time a call to Clerk's Backend API took, retries included, by endpoint.",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["endpoint"],
            )
            .expect("static metric definition"),
        );
        let signing_secrets = register(
            &registry,
            IntGauge::new(
                "clerk_sync_signing_secrets",
                "Webhook signing secrets in force.",
            )
            .expect("static metric definition"),
        );
        let secret_reloads = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "clerk_sync_secrets_reloads_total",
                    "Re-reads of the signing secrets file that changed something, by result (applied, failed).",
                ),
                &["result"],
            )
            .expect("static metric definition"),
        );
        let secrets_failing = register(
            &registry,
            IntGauge::new(
                "clerk_sync_secrets_reload_failing",
                "1 while the signing secrets file cannot be read or holds no valid secret (the secrets read before stay in force).",
            )
            .expect("static metric definition"),
        );
        let dead_lettered = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "clerk_sync_dead_lettered_total",
                    "Verified deliveries this instance kept as dead letters (each attempt), by reason.",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
        );
        let dead_letters = register(
            &registry,
            IntGauge::new(
                "clerk_sync_dead_letters",
                "Dead letters kept in the database (shared by every instance).",
            )
            .expect("static metric definition"),
        );
        let dead_letter_bytes = register(
            &registry,
            IntGauge::new(
                "clerk_sync_dead_letter_bytes",
                "Bytes of headers and bodies the dead letters kept hold.",
            )
            .expect("static metric definition"),
        );
        let dead_letters_dropped = register(
            &registry,
            prometheus::IntCounter::new(
                "clerk_sync_dead_letters_dropped_total",
                "Dead letters dropped, oldest first, to stay within the cap (from the database).",
            )
            .expect("static metric definition"),
        );
        // Present from the start, so that dashboards and alerts see 0 rather than nothing.
        secrets_failing.set(0);
        for result in ["applied", "failed"] {
            secret_reloads.with_label_values(&[result]);
        }
        // Present from the start, at 0, so that dashboards and alerts on the session sync see
        // a series before the first sync.
        session_syncs.with_label_values(&["applied"]);
        session_refusals.with_label_values(&["expired"]);
        for endpoint in ["users", "jwks"] {
            api_requests.with_label_values(&[endpoint, "ok"]);
            api_latency.with_label_values(&[endpoint]);
        }
        Self {
            registry,
            deliveries,
            rejected,
            latency,
            pool,
            pool_waiting,
            pending_deletes,
            last_delivery_age,
            up,
            group_commits,
            group_committed,
            session_syncs,
            session_refusals,
            api_requests,
            api_latency,
            signing_secrets,
            secret_reloads,
            secrets_failing,
            dead_lettered,
            dead_letters,
            dead_letter_bytes,
            dead_letters_dropped,
        }
    }

    /// How many signing secrets are in force.
    pub fn signing_secrets(&self, count: usize) {
        self.signing_secrets
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The signing secrets file was read again and its new set is in force.
    pub fn secrets_reloaded(&self, count: usize) {
        self.signing_secrets(count);
        self.secrets_failing.set(0);
        self.secret_reloads.with_label_values(&["applied"]).inc();
    }

    /// The signing secrets file could not be used; the secrets in force stay.
    pub fn secrets_reload_failed(&self) {
        self.secrets_failing.set(1);
        self.secret_reloads.with_label_values(&["failed"]).inc();
    }

    /// A verified delivery that cannot be applied was kept as a dead letter.
    pub fn dead_lettered(&self, reason: &str) {
        self.dead_lettered.with_label_values(&[reason]).inc();
    }

    /// A session sync was answered with `outcome`.
    pub fn session_sync(&self, outcome: &str) {
        self.session_syncs.with_label_values(&[outcome]).inc();
    }

    /// A session sync was refused, for `reason`.
    pub fn session_refused(&self, reason: &str) {
        self.session_refusals.with_label_values(&[reason]).inc();
    }

    /// A call to Clerk's Backend API ended with `result` after `seconds`.
    pub fn backend_api(&self, endpoint: &str, result: &str, seconds: f64) {
        self.api_requests
            .with_label_values(&[endpoint, result])
            .inc();
        self.api_latency
            .with_label_values(&[endpoint])
            .observe(seconds);
    }

    /// A verified delivery was handled.
    pub fn delivered(&self, event_type: &str, outcome: &str) {
        // Event types are the sender's: keep the label set small.
        let event_type = match event_type {
            "user.created" | "user.updated" | "user.deleted" => event_type,
            _ => "other",
        };
        self.deliveries
            .with_label_values(&[event_type, outcome])
            .inc();
    }

    /// A delivery was not applied, for `reason`.
    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// How long a delivery took to answer.
    pub fn observe_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    /// The text exposition, with the scrape-time gauges refreshed from `db`.
    pub async fn render(&self, db: &Database) -> String {
        let pool = db.pool_status();
        let in_use = pool.size.saturating_sub(pool.available);
        self.pool
            .with_label_values(&["in_use"])
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
        self.pool
            .with_label_values(&["idle"])
            .set(i64::try_from(pool.available).unwrap_or(i64::MAX));
        self.pool_waiting
            .set(i64::try_from(pool.waiting).unwrap_or(i64::MAX));
        let (commits, committed) = crate::sync::shared_commits(db);
        self.group_commits
            .inc_by(commits.saturating_sub(self.group_commits.get()));
        self.group_committed
            .inc_by(committed.saturating_sub(self.group_committed.get()));
        match db.gauges().await {
            Ok(gauges) => {
                self.up.set(1);
                self.pending_deletes.set(gauges.pending_deletes);
                if let Some(age) = gauges.last_delivery_age_seconds {
                    self.last_delivery_age.set(age.max(0.0));
                }
            }
            Err(error) => {
                self.up.set(0);
                tracing::warn!(%error, "metrics: could not read the database");
            }
        }
        match db.dead_letter_stats().await {
            Ok(stats) => {
                self.dead_letters.set(stats.kept);
                self.dead_letter_bytes.set(stats.bytes);
                let dropped = stats.dropped.max(0).unsigned_abs();
                self.dead_letters_dropped
                    .inc_by(dropped.saturating_sub(self.dead_letters_dropped.get()));
            }
            Err(error) => tracing::warn!(%error, "metrics: could not read the dead letters"),
        }
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
