//! `DATABASE_URL`: which backend, and where.

use std::path::PathBuf;

/// A parsed `DATABASE_URL`. `Debug` and `Display` never show a password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://…` or `postgresql://…`.
    Postgres {
        /// The URL handed to the driver (Prisma's `schema` parameter removed).
        url: String,
        /// Prisma's `?schema=NAME`, applied as the session's `search_path`.
        schema: Option<String>,
    },
    /// `sqlite://PATH`, `sqlite:PATH` or a plain file path.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
}

/// Why a `DATABASE_URL` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Empty.
    #[error("DATABASE_URL is empty")]
    Empty,
    /// A scheme clerk-sync does not speak.
    #[error("DATABASE_URL scheme {0:?} is not supported (use postgres://, postgresql://, sqlite: or a file path)")]
    UnsupportedScheme(String),
    /// `?schema=` that is not a plain identifier.
    #[error("DATABASE_URL schema parameter must be a plain identifier")]
    InvalidSchema,
}

/// The file used when no `DATABASE_URL` is given.
pub const DEFAULT_SQLITE_FILE: &str = "clerk-sync.db";

impl DatabaseUrl {
    /// Parses a URL or path.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(UrlError::Empty);
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Self::postgres(raw);
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
        if let Some((scheme, _)) = raw.split_once("://") {
            return Err(UrlError::UnsupportedScheme(scheme.to_owned()));
        }
        Ok(DatabaseUrl::Sqlite {
            path: PathBuf::from(raw),
        })
    }

    fn postgres(raw: &str) -> Result<Self, UrlError> {
        let Some((base, query)) = raw.split_once('?') else {
            return Ok(DatabaseUrl::Postgres {
                url: raw.to_owned(),
                schema: None,
            });
        };
        let mut schema = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", value)) => {
                    let valid = !value.is_empty()
                        && value.len() <= 63
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !valid {
                        return Err(UrlError::InvalidSchema);
                    }
                    schema = Some(value.to_owned());
                }
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(DatabaseUrl::Postgres { url, schema })
    }

    /// A description safe for logs: backend and host or file, never credentials.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Postgres { url, .. } => {
                let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or("");
                let host = after_scheme
                    .rsplit_once('@')
                    .map(|(_, h)| h)
                    .unwrap_or(after_scheme);
                let host = host.split('?').next().unwrap_or(host);
                format!("postgres://{host}")
            }
            DatabaseUrl::Sqlite { path } => format!("sqlite:{}", path.display()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
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
            DatabaseUrl::parse("postgresql://u:p@h:5432/db?schema=app&sslmode=disable"),
            Ok(DatabaseUrl::Postgres {
                url: "postgresql://u:p@h:5432/db?sslmode=disable".into(),
                schema: Some("app".into())
            })
        );
        assert_eq!(
            DatabaseUrl::parse("mysql://h/db"),
            Err(UrlError::UnsupportedScheme("mysql".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://h/db?schema=a;drop"),
            Err(UrlError::InvalidSchema)
        );
    }

    #[test]
    fn credentials_never_show() {
        let url =
            DatabaseUrl::parse("postgres://clerk:s3cret@db.internal:5432/app").expect("valid");
        assert_eq!(
            format!("{url:?} {url}"),
            "postgres://db.internal:5432/app postgres://db.internal:5432/app"
        );
    }
}
