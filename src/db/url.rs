//! `DATABASE_URL`: which backend, and where — read as the application's Prisma reads it.
//!
//! clerk-sync parses PostgreSQL URLs itself, because the application's URL carries
//! parameters the driver refuses (Prisma's `schema`, `pgbouncer`, `connection_limit`,
//! `sslaccept`, …) and TLS modes it does not know (`verify-ca`, `verify-full`). Only what the
//! driver understands is handed on (see `postgres::driver_config`). An unknown parameter is
//! named in a warning, never a failure, as Prisma drops them silently. Nothing here ever puts
//! a password into an error or a `Debug`/`Display` text.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A parsed `DATABASE_URL`. `Debug` and `Display` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://…` or `postgresql://…`.
    Postgres(Box<PgUrl>),
    /// `sqlite://PATH`, `sqlite:PATH` or a plain file path.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
}

/// A PostgreSQL connection string, every parameter read.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct PgUrl {
    /// Where to connect, tried in order.
    pub hosts: Vec<PgHost>,
    /// The role (percent-decoded).
    pub user: Option<String>,
    /// The password (percent-decoded); never printed.
    pub password: Option<Password>,
    /// The database name (percent-decoded).
    pub dbname: Option<String>,
    /// TLS: mode, roots and client identity.
    pub tls: TlsSettings,
    /// SCRAM channel binding, passed to the driver.
    pub channel_binding: ChannelBinding,
    /// Prisma's `schema`: the application's schema (the `search_path` clerk-sync uses).
    pub schema: Option<String>,
    /// Prisma's `connection_limit`: the pool size unless `--pool-size` is given.
    pub connection_limit: Option<usize>,
    /// Prisma's `pool_timeout` (seconds): longest wait for a free connection.
    pub pool_timeout: Option<Duration>,
    /// `connect_timeout` (seconds): longest a new connection may take.
    pub connect_timeout: Option<Duration>,
    /// Prisma's `socket_timeout` (seconds): longest a statement may run.
    pub socket_timeout: Option<Duration>,
    /// Whether statements must survive a transaction-mode pooler, and why.
    pub pooler: Pooler,
    /// `application_name`, passed to the driver.
    pub application_name: Option<String>,
    /// `options` (e.g. `-c search_path=app`), passed to the driver as the startup parameter.
    pub options: Option<String>,
    /// Parameters clerk-sync does not know, named in a warning at start.
    pub ignored: Vec<String>,
    /// `DIRECT_URL` (Prisma's `directUrl`): where migrations and their lock go.
    pub direct: Option<Box<PgUrl>>,
}

/// A password that `Debug` never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The password itself, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One host of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgHost {
    /// A host name or an IP address (IPv6 without brackets), and a port.
    Tcp {
        /// Name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix-socket directory (`host=/var/run/postgresql`), and the port naming the socket.
    Socket {
        /// The directory.
        dir: PathBuf,
        /// The port in the socket's name.
        port: u16,
    },
}

/// libpq's `sslmode`, after Prisma's `sslaccept` has been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plaintext first; TLS when the server refuses plaintext.
    Allow,
    /// TLS when the server offers it (libpq's and Prisma's default), unverified.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is not verified (as libpq and Prisma do).
    Require,
    /// TLS, the chain verified against the roots; any host name.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    /// Whether the certificate chain is checked.
    pub fn verifies_chain(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// libpq's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the roots a server's certificate must chain to come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Roots {
    /// The operating system's store.
    #[default]
    System,
    /// A PEM bundle (`sslrootcert=PATH`, or Prisma's `sslcert` without `sslkey`).
    File(PathBuf),
}

/// A client certificate for `cert` authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// libpq's `sslcert` + `sslkey`, both PEM.
    Pem {
        /// The certificate (chain), PEM.
        cert: PathBuf,
        /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Prisma's `sslidentity` (PKCS#12) and `sslpassword`.
    Pkcs12 {
        /// The bundle.
        path: PathBuf,
        /// Its password; never printed.
        password: Option<Password>,
    },
}

/// What TLS a connection asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// The mode.
    pub mode: SslMode,
    /// The roots for the `verify-*` modes.
    pub roots: Roots,
    /// A client certificate, if any.
    pub identity: Option<Identity>,
    /// `ssl_min_protocol_version=TLSv1.3`: TLS 1.2 refused.
    pub tls13_only: bool,
}

/// SCRAM channel binding (`channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// Never.
    Disable,
    /// When the server offers it over TLS.
    #[default]
    Prefer,
    /// Always, or fail.
    Require,
}

/// Whether clerk-sync keeps to what a transaction-mode pooler allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// A direct connection (or a session-mode pooler): session settings and a statement cache.
    #[default]
    Direct,
    /// `pgbouncer=true` in the URL.
    PgbouncerParameter,
    /// `statement_cache_size=0` in the URL.
    NoStatementCache,
    /// The host is a provider's transaction pooler (Neon `-pooler`, Supabase's Supavisor or
    /// dedicated pooler on 6543, Prisma Postgres `pooled.`), recognised by its name.
    KnownPoolerHost,
}

impl Pooler {
    /// Whether the pooler-safe mode is on.
    pub fn safe(self) -> bool {
        self != Pooler::Direct
    }

    /// Why, in a few words, for the log and the status.
    pub fn reason(self) -> &'static str {
        match self {
            Pooler::Direct => "off",
            Pooler::PgbouncerParameter => "on (pgbouncer=true)",
            Pooler::NoStatementCache => "on (statement_cache_size=0)",
            Pooler::KnownPoolerHost => "on (the host is a provider's transaction pooler)",
        }
    }
}

/// Why a `DATABASE_URL` was refused. No variant carries a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Empty.
    #[error("DATABASE_URL is empty")]
    Empty,
    /// A scheme clerk-sync does not speak.
    #[error("DATABASE_URL scheme {0:?} is not supported (use postgres://, postgresql://, sqlite: or a file path)")]
    UnsupportedScheme(String),
    /// A Prisma Accelerate URL (`prisma://`, `prisma+postgres://`): not a PostgreSQL address.
    #[error("DATABASE_URL is a Prisma Accelerate URL ({0}://…), which only Prisma Client can use: give clerk-sync the database's direct URL (Prisma Postgres: postgres://…@db.prisma.io:5432/postgres?sslmode=require, shown in the console under \"Direct connection\", often kept in DIRECT_URL)")]
    Accelerate(String),
    /// `?schema=` that is not a plain identifier.
    #[error(
        "DATABASE_URL schema parameter must be a plain identifier (letters, digits, _; at most 63)"
    )]
    InvalidSchema,
    /// A parameter whose value clerk-sync cannot use.
    #[error("DATABASE_URL parameter {name}: {problem}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// What is wrong, without the value when it may be secret.
        problem: String,
    },
    /// `DIRECT_URL` was refused (the message names it).
    #[error("{0}")]
    InDirectUrl(String),
    /// `DIRECT_URL` is not PostgreSQL while `DATABASE_URL` is.
    #[error("DIRECT_URL must be a postgres:// or postgresql:// URL")]
    DirectNotPostgres,
    /// A libpq security setting clerk-sync cannot honour.
    #[error("DATABASE_URL parameter {0} is not supported by clerk-sync; it stops rather than connect with less security than the URL asks for")]
    Unsupported(&'static str),
    /// The part before the path is not `user:password@host:port`.
    #[error("DATABASE_URL: {0}")]
    Malformed(&'static str),
}

/// The file used when no `DATABASE_URL` is given.
pub const DEFAULT_SQLITE_FILE: &str = "clerk-sync.db";

/// libpq's security settings clerk-sync refuses rather than ignores.
const UNSUPPORTED: &[&str] = &[
    "sslcrl",
    "sslcrldir",
    "require_auth",
    "sslcertmode",
    "sslnegotiation",
    "ssl_max_protocol_version",
    "requirepeer",
];

/// PostgreSQL's port when none is given.
const DEFAULT_PORT: u16 = 5432;

impl DatabaseUrl {
    /// Parses a URL or path. Relative certificate paths are resolved as [`cert_base`] says.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        Self::parse_relative_to(raw, &cert_base())
    }

    /// Parses a URL or path, resolving relative certificate paths against `base`.
    pub fn parse_relative_to(raw: &str, base: &Path) -> Result<Self, UrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(UrlError::Empty);
        }
        if let Some(rest) = raw
            .strip_prefix("postgres://")
            .or_else(|| raw.strip_prefix("postgresql://"))
        {
            return PgUrl::parse(rest, base).map(|pg| DatabaseUrl::Postgres(Box::new(pg)));
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(UrlError::Empty);
            }
            return Ok(DatabaseUrl::Sqlite {
                path: PathBuf::from(path),
            });
        }
        if let Some(rest) = raw.strip_prefix("file:") {
            // Prisma's SQLite URL (`file:./dev.db`): a relative path is relative to the
            // schema's folder, as Prisma resolves it, so the application's URL names the same
            // file to both; Prisma's parameters (`?connection_limit=1`, …) are not the path.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(UrlError::Empty);
            }
            let path = Path::new(path);
            return Ok(DatabaseUrl::Sqlite {
                path: if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    base.join(path)
                },
            });
        }
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with("postgres:") || lower.starts_with("postgresql:") {
            // Never taken for a file path (which would be logged whole, password and all).
            return Err(UrlError::Malformed(
                "a PostgreSQL URL starts with postgres:// or postgresql://",
            ));
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            let lower = scheme.to_ascii_lowercase();
            if lower == "prisma" || lower == "prisma+postgres" {
                return Err(UrlError::Accelerate(lower));
            }
            return Err(UrlError::UnsupportedScheme(scheme.to_owned()));
        }
        Ok(DatabaseUrl::Sqlite {
            path: PathBuf::from(raw),
        })
    }

    /// Adds `DIRECT_URL` (Prisma's `directUrl`): migrations and their lock go there.
    pub fn with_direct(self, direct: DatabaseUrl) -> Result<Self, UrlError> {
        match (self, direct) {
            (DatabaseUrl::Postgres(mut pg), DatabaseUrl::Postgres(direct)) => {
                pg.direct = Some(direct);
                Ok(DatabaseUrl::Postgres(pg))
            }
            (DatabaseUrl::Postgres(_), DatabaseUrl::Sqlite { .. }) => {
                Err(UrlError::DirectNotPostgres)
            }
            // SQLite has no pooler: DIRECT_URL means nothing there.
            (sqlite, _) => Ok(sqlite),
        }
    }

    /// The PostgreSQL settings, if this is PostgreSQL.
    pub fn postgres(&self) -> Option<&PgUrl> {
        match self {
            DatabaseUrl::Postgres(pg) => Some(pg.as_ref()),
            DatabaseUrl::Sqlite { .. } => None,
        }
    }

    /// A description safe for logs: backend and host or file, never credentials.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Postgres(pg) => pg.redacted(),
            DatabaseUrl::Sqlite { path } => format!("sqlite:{}", path.display()),
        }
    }
}

/// What a relative certificate path in the URL is relative to: the `prisma/` folder when
/// `prisma/schema.prisma` is in the working directory (Prisma resolves the same URL's paths
/// against its schema's folder, so the application's URL means the same file to both),
/// otherwise the working directory (as libpq does).
pub fn cert_base() -> PathBuf {
    let prisma = Path::new("prisma");
    if prisma.join("schema.prisma").is_file() {
        prisma.to_path_buf()
    } else {
        PathBuf::from(".")
    }
}

impl PgUrl {
    /// Parses what follows `postgres://`.
    fn parse(rest: &str, base: &Path) -> Result<Self, UrlError> {
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        // The last `@` ends the user part, so that an unencoded `@` or `/` in a password
        // still parses; the path (the database name) starts at the first `/` after it.
        let (userinfo, host_and_path) = match before_query.rfind('@') {
            Some(at) => (Some(&before_query[..at]), &before_query[at + 1..]),
            None => (None, before_query),
        };
        let (hostlist, path) = match host_and_path.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (host_and_path, None),
        };
        let mut url = PgUrl::default();
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                url.user = Some(decode(user, "user name")?);
            }
            if let Some(password) = password {
                url.password = Some(Password(decode(password, "password")?));
            }
        }
        url.hosts = parse_hosts(hostlist)?;
        if let Some(path) = path.filter(|p| !p.is_empty()) {
            url.dbname = Some(decode(path, "database name")?);
        }

        let mut sslmode: Option<SslMode> = None;
        let mut sslaccept: Option<bool> = None;
        let (mut sslcert, mut sslkey, mut sslrootcert) = (None, None, None);
        let (mut sslidentity, mut sslpassword) = (None, None);
        let mut socket_dir = None;
        let mut port_param = None;
        let mut pgbouncer = false;
        let mut no_cache = false;
        let mut min_tls13 = false;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // A name is letters, digits and `_`. Anything else is most likely the rest of a
            // password with an unencoded `?` or `&`, so it is never printed.
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(UrlError::Malformed(
                    "a query parameter's name is not a plain word: a `?`, `&` or `#` in the password must be percent-encoded (%3F, %26, %23)",
                ));
            }
            let key = key.to_owned();
            // A value is decoded only once its key is known, so that an unknown parameter's
            // value (which may be a secret) never reaches an error.
            let value = |name: &'static str| decode_param(value, name);
            match key.as_str() {
                "schema" => {
                    let schema = value("schema")?;
                    let valid = !schema.is_empty()
                        && schema.len() <= 63
                        && schema
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !valid {
                        return Err(UrlError::InvalidSchema);
                    }
                    url.schema = Some(schema);
                }
                "sslmode" => sslmode = Some(parse_sslmode(&value("sslmode")?)?),
                "sslaccept" => {
                    sslaccept = Some(match value("sslaccept")?.as_str() {
                        "strict" => true,
                        "accept_invalid_certs" => false,
                        _ => {
                            return Err(invalid("sslaccept", "use strict or accept_invalid_certs"))
                        }
                    })
                }
                "sslcert" => sslcert = Some(resolve(base, &value("sslcert")?)),
                "sslkey" => sslkey = Some(resolve(base, &value("sslkey")?)),
                "sslrootcert" => {
                    let root = value("sslrootcert")?;
                    sslrootcert = Some(if root == "system" {
                        Roots::System
                    } else {
                        Roots::File(resolve(base, &root))
                    });
                }
                "sslidentity" => sslidentity = Some(resolve(base, &value("sslidentity")?)),
                "sslpassword" => sslpassword = Some(Password(value("sslpassword")?)),
                "channel_binding" => {
                    url.channel_binding = match value("channel_binding")?.as_str() {
                        "disable" => ChannelBinding::Disable,
                        "prefer" => ChannelBinding::Prefer,
                        "require" => ChannelBinding::Require,
                        _ => {
                            return Err(invalid(
                                "channel_binding",
                                "use disable, prefer or require",
                            ))
                        }
                    }
                }
                "connection_limit" => {
                    let limit = parse_number("connection_limit", &value("connection_limit")?)?;
                    if limit == 0 {
                        return Err(invalid("connection_limit", "must be at least 1"));
                    }
                    url.connection_limit = Some(limit);
                }
                "pool_timeout" => {
                    url.pool_timeout = seconds("pool_timeout", &value("pool_timeout")?)?
                }
                "connect_timeout" => {
                    url.connect_timeout = seconds("connect_timeout", &value("connect_timeout")?)?
                }
                "socket_timeout" => {
                    url.socket_timeout = seconds("socket_timeout", &value("socket_timeout")?)?
                }
                "pgbouncer" => pgbouncer = parse_bool("pgbouncer", &value("pgbouncer")?)?,
                "statement_cache_size" => {
                    no_cache =
                        parse_number("statement_cache_size", &value("statement_cache_size")?)? == 0
                }
                "application_name" => url.application_name = Some(value("application_name")?),
                "options" => url.options = Some(value("options")?),
                "host" => {
                    let host = value("host")?;
                    if host.starts_with('/') {
                        socket_dir = Some(PathBuf::from(host));
                    } else {
                        // libpq's `host=`: names or addresses, comma-separated, no ports
                        // (`port=` gives those); an IPv6 address as it is or in brackets.
                        let port = url.hosts.first().map_or(DEFAULT_PORT, PgHost::port);
                        url.hosts = host
                            .split(',')
                            .filter(|h| !h.is_empty())
                            .map(|h| PgHost::Tcp {
                                host: h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                                port,
                            })
                            .collect();
                    }
                }
                "port" => port_param = Some(parse_port(&value("port")?)?),
                "user" => url.user = Some(value("user")?),
                "password" => url.password = Some(Password(value("password")?)),
                "dbname" => url.dbname = Some(value("dbname")?),
                // libpq security settings: dropping one would connect with less than was
                // asked for, so they stop the start instead of being ignored.
                name if UNSUPPORTED.contains(&name) => {
                    return Err(UrlError::Unsupported(
                        UNSUPPORTED
                            .iter()
                            .copied()
                            .find(|n| *n == name)
                            .unwrap_or("parameter"),
                    ))
                }
                "gssencmode" if value("gssencmode")? == "require" => {
                    return Err(UrlError::Unsupported("gssencmode=require"))
                }
                "ssl_min_protocol_version" => match value("ssl_min_protocol_version")?.as_str() {
                    // rustls speaks TLS 1.2 and 1.3 only.
                    "TLSv1" | "TLSv1.1" | "TLSv1.2" => {}
                    "TLSv1.3" => min_tls13 = true,
                    _ => {
                        return Err(invalid(
                            "ssl_min_protocol_version",
                            "use TLSv1.2 or TLSv1.3",
                        ))
                    }
                },
                _ => url.ignored.push(key),
            }
        }
        if let Some(port) = port_param {
            for host in &mut url.hosts {
                match host {
                    PgHost::Tcp { port: p, .. } | PgHost::Socket { port: p, .. } => *p = port,
                }
            }
        }
        if let Some(dir) = socket_dir {
            let port = url.hosts.first().map_or(DEFAULT_PORT, PgHost::port);
            url.hosts = vec![PgHost::Socket { dir, port }];
        }
        if url.hosts.is_empty() {
            url.hosts.push(PgHost::Tcp {
                host: "localhost".into(),
                port: port_param.unwrap_or(DEFAULT_PORT),
            });
        }

        url.tls = tls_settings(
            sslmode,
            sslaccept,
            sslcert,
            sslkey,
            sslrootcert,
            sslidentity,
            sslpassword,
        )?;
        url.tls.tls13_only = min_tls13;
        if url.hosts.iter().all(|h| matches!(h, PgHost::Socket { .. }))
            && url.tls.mode != SslMode::Disable
        {
            // libpq never negotiates TLS on a Unix socket; asking for it there is a mistake.
            if url.tls.mode != SslMode::Prefer && url.tls.mode != SslMode::Allow {
                return Err(invalid("sslmode", "TLS is not available on a Unix socket"));
            }
            url.tls.mode = SslMode::Disable;
        }
        url.pooler = if pgbouncer {
            Pooler::PgbouncerParameter
        } else if no_cache {
            Pooler::NoStatementCache
        } else if url.hosts.iter().any(PgHost::is_known_transaction_pooler) {
            Pooler::KnownPoolerHost
        } else {
            Pooler::Direct
        };
        Ok(url)
    }

    /// `postgres://host:port/db`, with no user name or password.
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| match h {
                PgHost::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
                PgHost::Tcp { host, port } => format!("{host}:{port}"),
                PgHost::Socket { dir, port } => format!("{}:{port}", dir.display()),
            })
            .collect();
        format!(
            "postgres://{}/{}",
            hosts.join(","),
            self.dbname.as_deref().unwrap_or("")
        )
    }
}

impl PgHost {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            PgHost::Tcp { port, .. } | PgHost::Socket { port, .. } => *port,
        }
    }

    /// A provider's transaction-mode pooler, by the documented host shapes: Neon's
    /// `ep-…-pooler.…neon.tech`, Supabase's Supavisor on port 6543 (5432 is session mode),
    /// Prisma Postgres' `pooled.db.prisma.io`.
    fn is_known_transaction_pooler(&self) -> bool {
        let PgHost::Tcp { host, port } = self else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let first = host.split('.').next().unwrap_or("");
        (host.ends_with(".neon.tech") && first.ends_with("-pooler"))
            || ((host.ends_with(".pooler.supabase.com") || host.ends_with(".supabase.co"))
                && *port == 6543)
            || host == "pooled.db.prisma.io"
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn invalid(name: &'static str, problem: &str) -> UrlError {
    UrlError::InvalidParameter {
        name,
        problem: problem.to_owned(),
    }
}

/// Percent-decodes a part of the authority or path.
fn decode(raw: &str, what: &'static str) -> Result<String, UrlError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| UrlError::InvalidParameter {
            name: what,
            problem: "is not UTF-8 once percent-decoded".into(),
        })
}

/// Decodes a parameter's value as Prisma does (form encoding: `+` is a space, then
/// percent-decoding).
fn decode_param(raw: &str, name: &'static str) -> Result<String, UrlError> {
    decode(&raw.replace('+', " "), name)
}

fn parse_hosts(list: &str) -> Result<Vec<PgHost>, UrlError> {
    let mut hosts = Vec::new();
    if list.is_empty() {
        return Ok(hosts);
    }
    for part in list.split(',') {
        let (host, port) = if let Some(rest) = part.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or(UrlError::Malformed("an IPv6 address lacks its closing ]"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(UrlError::Malformed("unexpected text after an IPv6 address")),
            };
            (addr.to_owned(), port)
        } else {
            match part.rsplit_once(':') {
                Some((h, p)) => (decode(h, "host")?, Some(p)),
                None => (decode(part, "host")?, None),
            }
        };
        let port = match port {
            Some(p) if !p.is_empty() => parse_port(p)?,
            _ => DEFAULT_PORT,
        };
        if host.starts_with('/') {
            hosts.push(PgHost::Socket {
                dir: PathBuf::from(host),
                port,
            });
        } else if host.is_empty() {
            hosts.push(PgHost::Tcp {
                host: "localhost".into(),
                port,
            });
        } else {
            hosts.push(PgHost::Tcp { host, port });
        }
    }
    Ok(hosts)
}

fn parse_port(raw: &str) -> Result<u16, UrlError> {
    raw.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or(UrlError::Malformed(
            "the port is not a number from 1 to 65535",
        ))
}

fn parse_sslmode(raw: &str) -> Result<SslMode, UrlError> {
    Ok(match raw {
        "disable" => SslMode::Disable,
        "allow" => SslMode::Allow,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => {
            return Err(invalid(
                "sslmode",
                "use disable, allow, prefer, require, verify-ca or verify-full",
            ))
        }
    })
}

fn parse_bool(name: &'static str, raw: &str) -> Result<bool, UrlError> {
    match raw {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, "use true or false")),
    }
}

fn parse_number(name: &'static str, raw: &str) -> Result<usize, UrlError> {
    raw.parse::<usize>()
        .map_err(|_| invalid(name, "must be a whole number"))
}

/// Seconds, Prisma's unit for its timeouts; 0 means none. At most a day: a statement timeout
/// of more than PostgreSQL's limit (about 24 days) would fail every transaction.
fn seconds(name: &'static str, raw: &str) -> Result<Option<Duration>, UrlError> {
    let n = parse_number(name, raw)?;
    if n > 86_400 {
        return Err(invalid(name, "must be at most 86400 seconds"));
    }
    Ok((n > 0).then(|| Duration::from_secs(n as u64)))
}

fn resolve(base: &Path, raw: &str) -> PathBuf {
    let path = Path::new(raw);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// libpq's `sslmode` and Prisma's `sslaccept`, `sslcert`, `sslidentity` combined.
///
/// - `sslaccept=strict` verifies the chain and host of whatever TLS is used (`require`
///   becomes `verify-full`); `sslaccept=accept_invalid_certs` (Prisma's default) turns
///   `verify-*` off only when nothing else asked for it; the stricter of the two wins.
/// - `sslcert` without `sslkey` is Prisma's: the server's CA. With `sslkey` it is libpq's
///   client certificate.
/// - As in libpq, a CA file given with `require` verifies the chain (`verify-ca`), and
///   `sslrootcert=system` means `verify-full` (anything weaker is refused).
/// - `verify-ca` needs a CA file: against public roots, checking the chain and not the name
///   would accept anybody's certificate.
fn tls_settings(
    sslmode: Option<SslMode>,
    sslaccept: Option<bool>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    sslrootcert: Option<Roots>,
    sslidentity: Option<PathBuf>,
    sslpassword: Option<Password>,
) -> Result<TlsSettings, UrlError> {
    let mut settings = TlsSettings {
        mode: sslmode.unwrap_or_default(),
        ..TlsSettings::default()
    };
    let mut ca_file = false;
    let sslrootcert_given = sslrootcert.is_some();
    match (sslcert, sslkey) {
        (Some(cert), Some(key)) => settings.identity = Some(Identity::Pem { cert, key }),
        (Some(ca), None) => {
            settings.roots = Roots::File(ca);
            ca_file = true;
        }
        (None, Some(_)) => return Err(invalid("sslkey", "needs sslcert (the client certificate)")),
        (None, None) => {}
    }
    if let Some(roots) = sslrootcert {
        ca_file = matches!(roots, Roots::File(_));
        settings.roots = roots;
    }
    let sslrootcert = sslrootcert_given.then_some(());
    if let Some(path) = sslidentity {
        if settings.identity.is_some() {
            return Err(invalid(
                "sslidentity",
                "give either sslidentity or sslcert + sslkey",
            ));
        }
        settings.identity = Some(Identity::Pkcs12 {
            path,
            password: sslpassword,
        });
    }
    if settings.roots == Roots::System && sslrootcert.is_some() {
        // libpq's `sslrootcert=system` means verify-full, and refuses anything weaker.
        match sslmode {
            None | Some(SslMode::VerifyFull) => settings.mode = SslMode::VerifyFull,
            Some(_) => {
                return Err(invalid(
                    "sslrootcert",
                    "system needs sslmode=verify-full (or no sslmode): the system's roots vouch for names, so only verify-full checks anything",
                ))
            }
        }
    }
    if sslaccept == Some(true) {
        if settings.mode == SslMode::Disable {
            return Err(invalid(
                "sslaccept",
                "strict asks for a verified TLS connection, and sslmode=disable for none",
            ));
        }
        settings.mode = SslMode::VerifyFull;
    } else if ca_file && settings.mode == SslMode::Require {
        settings.mode = SslMode::VerifyCa;
    }
    if settings.mode == SslMode::VerifyCa && settings.roots == Roots::System {
        return Err(invalid(
            "sslmode",
            "verify-ca needs the server's CA (sslrootcert=PATH): against the system's public roots it would accept any certificate for any name; use verify-full for a publicly trusted server",
        ));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(raw: &str) -> PgUrl {
        match DatabaseUrl::parse_relative_to(raw, Path::new("/app/prisma")) {
            Ok(DatabaseUrl::Postgres(pg)) => *pg,
            other => panic!("{raw}: {other:?}"),
        }
    }

    fn tcp(host: &str, port: u16) -> Vec<PgHost> {
        vec![PgHost::Tcp {
            host: host.into(),
            port,
        }]
    }

    #[test]
    fn prisma_s_file_urls_are_relative_to_the_schema_s_folder() {
        let sqlite = |raw: &str| match DatabaseUrl::parse_relative_to(raw, Path::new("/app/prisma"))
        {
            Ok(DatabaseUrl::Sqlite { path }) => path,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(sqlite("file:./dev.db"), Path::new("/app/prisma/./dev.db"));
        assert_eq!(
            sqlite("file:dev.db?connection_limit=1"),
            Path::new("/app/prisma/dev.db")
        );
        assert_eq!(
            sqlite("file:/var/data/app.db"),
            Path::new("/var/data/app.db")
        );
        assert_eq!(
            sqlite("file:///var/data/app.db"),
            Path::new("/var/data/app.db")
        );
        assert!(matches!(
            DatabaseUrl::parse_relative_to("file:", Path::new("/app/prisma")),
            Err(UrlError::Empty)
        ));
    }

    #[test]
    fn sqlite_forms_parse() {
        let sqlite = |p: &str| {
            Ok(DatabaseUrl::Sqlite {
                path: PathBuf::from(p),
            })
        };
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/app.db"),
            sqlite("data/app.db")
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/app.db"),
            sqlite("/var/lib/app.db")
        );
        assert_eq!(DatabaseUrl::parse("sqlite:app.db"), sqlite("app.db"));
        assert_eq!(DatabaseUrl::parse("./app.db"), sqlite("./app.db"));
        assert_eq!(
            DatabaseUrl::parse("mysql://h/db"),
            Err(UrlError::UnsupportedScheme("mysql".into()))
        );
    }

    #[test]
    fn neon_direct_is_tls_with_channel_binding() {
        let url = pg("postgresql://neondb_owner:npg_AbC123@ep-cool-darkness-a1b2c3d4.us-east-2.aws.neon.tech/neondb?sslmode=require&channel_binding=require");
        assert_eq!(
            url.hosts,
            tcp("ep-cool-darkness-a1b2c3d4.us-east-2.aws.neon.tech", 5432)
        );
        assert_eq!(url.user.as_deref(), Some("neondb_owner"));
        assert_eq!(
            url.password.as_ref().map(Password::expose),
            Some("npg_AbC123")
        );
        assert_eq!(url.dbname.as_deref(), Some("neondb"));
        assert_eq!(url.tls.mode, SslMode::Require);
        assert_eq!(url.channel_binding, ChannelBinding::Require);
        assert_eq!(url.pooler, Pooler::Direct);
        assert!(url.ignored.is_empty());
    }

    #[test]
    fn neon_pooled_with_prismas_parameters_is_pooler_safe() {
        let url = pg("postgresql://neondb_owner:pw@ep-cool-darkness-a1b2c3d4-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require&pgbouncer=true&connect_timeout=15&pool_timeout=20&connection_limit=5");
        assert_eq!(url.pooler, Pooler::PgbouncerParameter);
        assert_eq!(url.connect_timeout, Some(Duration::from_secs(15)));
        assert_eq!(url.pool_timeout, Some(Duration::from_secs(20)));
        assert_eq!(url.connection_limit, Some(5));
        // Without pgbouncer=true the host alone says it is Neon's transaction pooler.
        let url = pg("postgresql://u:pw@ep-cool-darkness-a1b2c3d4-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require");
        assert_eq!(url.pooler, Pooler::KnownPoolerHost);
    }

    #[test]
    fn supabase_session_and_transaction_poolers() {
        let session = pg("postgresql://postgres.abcdefghijklmnop:pa%24%24word@aws-0-eu-central-1.pooler.supabase.com:5432/postgres");
        assert_eq!(session.user.as_deref(), Some("postgres.abcdefghijklmnop"));
        assert_eq!(
            session.password.as_ref().map(Password::expose),
            Some("pa$$word")
        );
        assert_eq!(session.pooler, Pooler::Direct);
        assert_eq!(session.tls.mode, SslMode::Prefer);
        let transaction = pg("postgresql://postgres.abcdefghijklmnop:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres?pgbouncer=true");
        assert_eq!(
            transaction.hosts,
            tcp("aws-0-eu-central-1.pooler.supabase.com", 6543)
        );
        assert_eq!(transaction.pooler, Pooler::PgbouncerParameter);
        let unmarked =
            pg("postgresql://p.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres");
        assert_eq!(unmarked.pooler, Pooler::KnownPoolerHost);
        let direct = pg("postgresql://postgres:pw@db.abcdefghijklmnop.supabase.co:5432/postgres?sslmode=verify-full&sslrootcert=prod-ca-2021.crt");
        assert_eq!(direct.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            direct.tls.roots,
            Roots::File("/app/prisma/prod-ca-2021.crt".into())
        );
    }

    #[test]
    fn prisma_postgres_direct_and_pooled_and_accelerate() {
        let direct = pg("postgres://0123abcd:sk_AbCdEf@db.prisma.io:5432/postgres?sslmode=require");
        assert_eq!(direct.hosts, tcp("db.prisma.io", 5432));
        assert_eq!(direct.tls.mode, SslMode::Require);
        assert_eq!(direct.pooler, Pooler::Direct);
        let pooled =
            pg("postgres://0123abcd:sk_AbCdEf@pooled.db.prisma.io:5432/postgres?sslmode=require");
        assert_eq!(pooled.pooler, Pooler::KnownPoolerHost);
        for accelerate in [
            "prisma+postgres://accelerate.prisma-data.net/?api_key=eyJhbGciOi",
            "prisma://accelerate.prisma-data.net/?api_key=eyJhbGciOi",
        ] {
            let error = DatabaseUrl::parse(accelerate).expect_err("refused");
            assert!(matches!(error, UrlError::Accelerate(_)));
            let text = error.to_string();
            assert!(text.contains("direct URL"), "{text}");
            assert!(!text.contains("eyJhbGciOi"), "{text}");
        }
    }

    #[test]
    fn rds_with_its_ca_bundle_and_heroku_and_railway() {
        let rds = pg("postgresql://app:pw@mydb.c9akciq32.us-east-1.rds.amazonaws.com:5432/app?sslmode=verify-full&sslrootcert=/certs/global-bundle.pem");
        assert_eq!(rds.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            rds.tls.roots,
            Roots::File("/certs/global-bundle.pem".into())
        );
        let heroku = pg("postgres://u1a2b3:p4f5@ec2-3-210-1-2.compute-1.amazonaws.com:5432/d6e7f8?sslmode=require");
        assert_eq!(heroku.tls.mode, SslMode::Require);
        assert_eq!(heroku.tls.roots, Roots::System);
        let railway = pg("postgresql://postgres:pw@roundhouse.proxy.rlwy.net:41234/railway");
        assert_eq!(railway.hosts, tcp("roundhouse.proxy.rlwy.net", 41234));
        assert_eq!(railway.tls.mode, SslMode::Prefer);
    }

    #[test]
    fn a_unix_socket_ipv6_and_a_password_with_at_and_slash() {
        let socket = pg("postgresql://app:pw@localhost/app?host=/var/run/postgresql");
        assert_eq!(
            socket.hosts,
            vec![PgHost::Socket {
                dir: "/var/run/postgresql".into(),
                port: 5432
            }]
        );
        assert_eq!(socket.tls.mode, SslMode::Disable);
        let encoded_socket = pg("postgresql://app@%2Fvar%2Frun%2Fpostgresql:5433/app");
        assert_eq!(
            encoded_socket.hosts,
            vec![PgHost::Socket {
                dir: "/var/run/postgresql".into(),
                port: 5433
            }]
        );
        let v6 = pg("postgresql://app:pw@[2001:db8::1]:6432/app");
        assert_eq!(v6.hosts, tcp("2001:db8::1", 6432));
        assert_eq!(v6.redacted(), "postgres://[2001:db8::1]:6432/app");
        let encoded = pg("postgresql://app:p%40ss%2Fw%3Ard@db.internal/app");
        assert_eq!(
            encoded.password.as_ref().map(Password::expose),
            Some("p@ss/w:rd")
        );
        assert_eq!(encoded.hosts, tcp("db.internal", 5432));
        let raw = pg("postgresql://app:p@ss/word@db.internal:5433/app");
        assert_eq!(
            raw.password.as_ref().map(Password::expose),
            Some("p@ss/word")
        );
        assert_eq!(raw.hosts, tcp("db.internal", 5433));
        assert_eq!(raw.dbname.as_deref(), Some("app"));
    }

    #[test]
    fn prisma_tls_parameters_keep_prismas_meaning() {
        let strict = pg("postgresql://u@h/db?sslmode=require&sslaccept=strict");
        assert_eq!(strict.tls.mode, SslMode::VerifyFull);
        let lax = pg("postgresql://u@h/db?sslmode=require&sslaccept=accept_invalid_certs");
        assert_eq!(lax.tls.mode, SslMode::Require);
        let ca = pg("postgresql://u@h/db?sslmode=require&sslcert=../certs/ca.pem");
        assert_eq!(
            ca.tls.roots,
            Roots::File("/app/prisma/../certs/ca.pem".into())
        );
        assert_eq!(ca.tls.mode, SslMode::VerifyCa);
        assert!(ca.tls.identity.is_none());
        let client = pg("postgresql://u@h/db?sslmode=verify-full&sslcert=client.crt&sslkey=client.key&sslrootcert=system");
        assert_eq!(
            client.tls.identity,
            Some(Identity::Pem {
                cert: "/app/prisma/client.crt".into(),
                key: "/app/prisma/client.key".into()
            })
        );
        assert_eq!(client.tls.roots, Roots::System);
        let p12 = pg(
            "postgresql://u@h/db?sslmode=require&sslidentity=/id/client.p12&sslpassword=hunter2",
        );
        assert!(
            matches!(p12.tls.identity, Some(Identity::Pkcs12 { ref path, .. }) if path == Path::new("/id/client.p12"))
        );
        assert!(!format!("{:?}", p12.tls).contains("hunter2"));
    }

    #[test]
    fn unknown_parameters_are_named_not_refused() {
        let url = pg("postgresql://u@h/db?schema=app&sslmode=disable&statement_cache_size=0&application_name=clerk-sync&options=-c%20jit%3Doff&max_idle_connection_lifetime=30&secret_thing=topsecret");
        assert_eq!(url.schema.as_deref(), Some("app"));
        assert_eq!(url.pooler, Pooler::NoStatementCache);
        assert_eq!(url.application_name.as_deref(), Some("clerk-sync"));
        assert_eq!(url.options.as_deref(), Some("-c jit=off"));
        assert_eq!(
            url.ignored,
            vec!["max_idle_connection_lifetime", "secret_thing"]
        );
    }

    #[test]
    fn bad_values_are_refused_by_name_without_secrets() {
        let refused = |raw: &str| DatabaseUrl::parse(raw).expect_err(raw).to_string();
        assert!(refused("postgres://h/db?schema=a;drop").contains("schema"));
        assert!(refused("postgres://h/db?sslmode=maybe").contains("sslmode"));
        assert!(refused("postgres://h/db?sslaccept=sometimes").contains("sslaccept"));
        assert!(refused("postgres://h/db?connection_limit=many").contains("connection_limit"));
        assert!(refused("postgres://h/db?pgbouncer=perhaps").contains("pgbouncer"));
        assert!(refused("postgres://u:s3cret@h:99999/db").contains("port"));
        let text = refused("postgres://u:s3cret@[::1/db");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(refused("postgres://u@h/db?sslkey=k.pem").contains("sslkey"));
    }

    #[test]
    fn nothing_weakens_a_verified_mode() {
        let refused = |raw: &str| DatabaseUrl::parse(raw).expect_err(raw).to_string();
        // verify-ca against public roots would accept anybody's certificate.
        assert!(refused("postgres://h/db?sslmode=verify-ca")
            .contains("verify-ca needs the server's CA"));
        assert_eq!(
            pg("postgres://h/db?sslmode=verify-ca&sslrootcert=/ca.pem")
                .tls
                .mode,
            SslMode::VerifyCa
        );
        // libpq's sslrootcert=system means verify-full, and nothing weaker.
        assert_eq!(
            pg("postgres://h/db?sslrootcert=system").tls.mode,
            SslMode::VerifyFull
        );
        assert!(
            refused("postgres://h/db?sslmode=require&sslrootcert=system").contains("sslrootcert")
        );
        assert!(
            refused("postgres://h/db?sslmode=prefer&sslrootcert=system").contains("sslrootcert")
        );
        // strict wins over allow, and contradicts disable.
        assert_eq!(
            pg("postgres://h/db?sslmode=allow&sslaccept=strict")
                .tls
                .mode,
            SslMode::VerifyFull
        );
        assert_eq!(
            pg("postgres://h/db?sslaccept=strict").tls.mode,
            SslMode::VerifyFull
        );
        assert!(refused("postgres://h/db?sslmode=disable&sslaccept=strict").contains("sslaccept"));
        // accept_invalid_certs never undoes a verify-* mode.
        assert_eq!(
            pg("postgres://h/db?sslmode=verify-full&sslaccept=accept_invalid_certs")
                .tls
                .mode,
            SslMode::VerifyFull
        );
        // Security settings clerk-sync cannot honour stop the start rather than be dropped.
        for setting in [
            "sslcrl=/crl.pem",
            "require_auth=scram-sha-256",
            "sslnegotiation=direct",
            "gssencmode=require",
        ] {
            assert!(
                refused(&format!("postgres://h/db?{setting}")).contains("not supported"),
                "{setting}"
            );
        }
        assert!(
            pg("postgres://h/db?sslmode=require&ssl_min_protocol_version=TLSv1.3")
                .tls
                .tls13_only
        );
        assert_eq!(
            pg("postgres://h/db?gssencmode=prefer").ignored,
            vec!["gssencmode"]
        );
    }

    #[test]
    fn a_password_with_an_unencoded_question_mark_is_refused_without_showing_it() {
        let error = DatabaseUrl::parse("postgres://app:?hunter2@db.example.com/app")
            .expect_err("refused")
            .to_string();
        assert!(error.contains("percent-encoded"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = DatabaseUrl::parse("postgres:app:hunter2@db.example.com/app")
            .expect_err("not a file path")
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn query_values_read_as_prisma_reads_them() {
        let url = pg("postgresql://u@h/db?options=-c+search_path%3Dapp&host=::1&port=6432");
        assert_eq!(url.options.as_deref(), Some("-c search_path=app"));
        assert_eq!(url.hosts, tcp("::1", 6432));
        let listed = pg("postgresql://u@h/db?host=a.internal,%5B2001:db8::2%5D");
        assert_eq!(
            listed.hosts,
            vec![
                PgHost::Tcp {
                    host: "a.internal".into(),
                    port: 5432
                },
                PgHost::Tcp {
                    host: "2001:db8::2".into(),
                    port: 5432
                }
            ]
        );
        let refused =
            DatabaseUrl::parse("postgres://h/db?socket_timeout=99999999").expect_err("bounded");
        assert!(refused.to_string().contains("socket_timeout"));
        assert_eq!(
            pg("postgresql://u@db.abcdefghijklmnop.supabase.co:5432/postgres").pooler,
            Pooler::Direct
        );
        assert_eq!(
            pg("postgresql://u@db.abcdefghijklmnop.supabase.co:6543/postgres").pooler,
            Pooler::KnownPoolerHost
        );
    }

    #[test]
    fn credentials_never_show() {
        let url =
            DatabaseUrl::parse("postgres://clerk:s3cret@db.internal:5432/app?sslpassword=p12pass")
                .expect("valid");
        let shown = format!("{url:?} {url} {:?}", url.postgres());
        assert!(
            !shown.contains("s3cret") && !shown.contains("p12pass"),
            "{shown}"
        );
        assert_eq!(url.to_string(), "postgres://db.internal:5432/app");
    }
}
