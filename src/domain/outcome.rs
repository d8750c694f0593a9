//! What a delivery did.

/// What a delivery did; the answer's body names it, and `deliveries` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The change was written.
    Applied,
    /// This `svix-id` was seen before (or, for a user read from Clerk's API, this very
    /// version is the one applied); nothing was done.
    Duplicate,
    /// A newer version or a tombstone was already applied; nothing was written.
    Stale,
    /// An event type clerk-sync does not apply (or a user without email, when skipped).
    Ignored,
    /// The tombstone was written but the application's foreign keys still hold the row.
    Deferred,
}

impl Outcome {
    /// The outcome's name as stored and answered.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Ignored => "ignored",
            Outcome::Deferred => "deferred",
        }
    }

    /// Parses a stored outcome name.
    pub fn parse(raw: &str) -> Option<Self> {
        [
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Stale,
            Outcome::Ignored,
            Outcome::Deferred,
        ]
        .into_iter()
        .find(|o| o.as_str() == raw)
    }
}
