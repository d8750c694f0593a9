//! Secrets from files (the `_FILE` convention), and the webhook signing secrets in force.
//!
//! Kubernetes and Docker hand secrets over as files: `CLERK_WEBHOOK_SIGNING_SECRET_FILE`,
//! `CLERK_SECRET_KEY_FILE` and `DATABASE_URL_FILE` name such a file instead of carrying the
//! value. A file's contents are never logged or echoed in an error; only its path is.
//!
//! Signing secrets read from a file are read again on SIGHUP and whenever the file's contents
//! change, so a rotation (the new secret beside the old, then the old removed) needs no
//! restart. The file is polled — its contents, once a second — rather than watched with
//! inotify: Kubernetes updates a mounted Secret by swapping a symlinked directory, which a
//! watch on the file itself never sees, Docker and editors replace files by rename, and
//! reading a few bytes a second sees all of these with no new dependency. New contents are
//! acted on when two reads a second apart find them, so that a file rewritten in place is
//! never taken half-written (SIGHUP reads at once). A new set takes effect between two
//! deliveries: a delivery is verified against one set, whole. A read that
//! fails, or finds no valid secret, changes nothing: the secrets in force stay in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use crate::verify::{SecretError, Verifier};

/// Why a secret file could not be used. Names the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not UTF-8 text.
    #[error("{} is not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// The file holds nothing.
    #[error("{} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file's signing secrets are not usable.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (the secret itself is never echoed).
        source: SecretError,
    },
    /// Both the variable and its `_FILE` form are set: which one is meant is unclear.
    #[error("both {name} and {name}_FILE are set: set only one")]
    Both {
        /// The variable's name.
        name: &'static str,
    },
}

fn read_text(path: &Path) -> Result<String, SecretFileError> {
    let bytes = std::fs::read(path).map_err(|source| SecretFileError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| SecretFileError::NotText {
        path: path.to_owned(),
    })
}

/// Reads a one-value secret file (`DATABASE_URL_FILE`, `CLERK_SECRET_KEY_FILE`): its contents
/// without surrounding whitespace (files usually end with a newline).
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let text = read_text(path)?;
    let value = text.trim();
    if value.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(value.to_owned())
}

/// Reads signing secrets from a file: one or more `whsec_…`, separated by whitespace
/// (newlines included) or commas.
pub fn read_signing_secrets(path: &Path) -> Result<Verifier, SecretFileError> {
    parse_signing_secrets(path, &read_text(path)?)
}

fn parse_signing_secrets(path: &Path, text: &str) -> Result<Verifier, SecretFileError> {
    Verifier::parse(text).map_err(|source| SecretFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// What a re-read of the signing secrets file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The contents are those read last time: nothing to do.
    Unchanged,
    /// A new set is in force; how many secrets it holds.
    Applied(usize),
}

/// The signing secrets in force; with a file, replaceable while the daemon runs.
pub struct SigningSecrets {
    current: RwLock<Arc<Verifier>>,
    file: Option<PathBuf>,
    /// What the file held at the last reads.
    seen: Mutex<Seen>,
}

/// Digests of the file's contents.
#[derive(Default)]
struct Seen {
    /// The contents last acted on (valid or not); none after a failed read, so that the next
    /// readable contents are parsed again whatever they are.
    settled: Option<[u8; 32]>,
    /// New contents read once: they are acted on when the next read finds them again, so that
    /// a file being rewritten in place (`sudoedit`, `echo >`) is never read half-written.
    pending: Option<[u8; 32]>,
}

impl std::fmt::Debug for SigningSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningSecrets")
            .field("current", &self.current())
            .field("file", &self.file)
            .finish()
    }
}

impl From<Verifier> for SigningSecrets {
    fn from(verifier: Verifier) -> Self {
        Self::fixed(verifier)
    }
}

impl SigningSecrets {
    /// Secrets that never change (from the environment or a flag).
    pub fn fixed(verifier: Verifier) -> Self {
        Self {
            current: RwLock::new(Arc::new(verifier)),
            file: None,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Secrets read from `path`, now and on every [`Self::reload`]; the first read must succeed.
    pub fn from_file(path: &Path) -> Result<Self, SecretFileError> {
        let text = read_text(path)?;
        let verifier = parse_signing_secrets(path, &text)?;
        Ok(Self {
            current: RwLock::new(Arc::new(verifier)),
            file: Some(path.to_owned()),
            seen: Mutex::new(Seen {
                settled: Some(Sha256::digest(text.as_bytes()).into()),
                pending: None,
            }),
        })
    }

    /// The file the secrets come from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<Verifier> {
        // A poisoned lock still holds a complete set: replacing it is a single assignment.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the file again. New contents are acted on once two reads in a row find them
    /// (polling calls this every second); with `force` (SIGHUP) at once, and unchanged
    /// contents are checked again. On any error the set in force stays.
    pub fn reload(&self, force: bool) -> Result<Reload, SecretFileError> {
        let Some(path) = &self.file else {
            return Ok(Reload::Unchanged);
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(source) => {
                *seen = Seen::default();
                return Err(SecretFileError::Unreadable {
                    path: path.clone(),
                    source,
                });
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let same = seen.settled == Some(digest);
        if !force && same {
            seen.pending = None;
            return Ok(Reload::Unchanged);
        }
        if !force && seen.pending != Some(digest) {
            seen.pending = Some(digest);
            return Ok(Reload::Unchanged);
        }
        *seen = Seen {
            settled: Some(digest),
            pending: None,
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| SecretFileError::NotText { path: path.clone() })?;
        let verifier = parse_signing_secrets(path, &text)?;
        if same {
            // Valid contents acted on before are the set in force.
            return Ok(Reload::Unchanged);
        }
        let count = verifier.count();
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(verifier),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(verifier),
        }
        Ok(Reload::Applied(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const B: &str = "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ=";

    #[test]
    fn a_bad_file_keeps_the_secrets_in_force_and_a_good_one_replaces_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{A}\n")).expect("write");
        let secrets = SigningSecrets::from_file(&path).expect("first read");
        assert_eq!(secrets.current().count(), 1);
        assert_eq!(secrets.reload(false).expect("same"), Reload::Unchanged);

        std::fs::write(&path, "whsec_!!not-base64!!").expect("write");
        // New contents wait for a second read that finds them again.
        assert_eq!(secrets.reload(false).expect("pending"), Reload::Unchanged);
        assert!(matches!(
            secrets.reload(false),
            Err(SecretFileError::Invalid { .. })
        ));
        std::fs::write(&path, "").expect("write");
        assert!(secrets.reload(true).is_err());
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(
            secrets.reload(false),
            Err(SecretFileError::Unreadable { .. })
        ));
        assert_eq!(secrets.current().count(), 1);

        std::fs::write(&path, format!("{A}\n{B}\n")).expect("write");
        assert_eq!(secrets.reload(false).expect("pending"), Reload::Unchanged);
        assert_eq!(secrets.reload(false).expect("valid"), Reload::Applied(2));
        assert_eq!(secrets.current().count(), 2);
    }

    #[test]
    fn errors_name_the_file_and_never_its_contents() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "whsec_!!hidden-value!!").expect("write");
        let error = read_signing_secrets(&path).expect_err("malformed");
        let text = error.to_string();
        assert!(text.contains("secret #1") && text.contains(&*path.to_string_lossy()));
        assert!(!text.contains("hidden-value"), "{text}");
    }
}
