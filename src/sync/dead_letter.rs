//! Dead letters: deliveries whose signature verified but which cannot be applied for a reason
//! a retry will not cure.
//!
//! Svix resends exactly the bytes it signed, so a verified body that is not a usable event
//! (not JSON, a user object whose shape changed under a newer Clerk API version) fails the
//! same way on every retry; so does a value the application's table refuses for good (a
//! `CHECK` or `NOT NULL` constraint, a column too narrow). Such a delivery is kept — headers,
//! raw body, reason, first and last seen, attempts — once per `svix-id`, so that after an
//! upgrade or a schema fix `clerk-sync replay --dead-letters` applies it, long after Svix
//! stopped retrying. The answer to the sender does not change (the Clerk dashboard still shows
//! the failure). A failure that may pass (database unavailable, a timeout) is never a dead
//! letter: Svix's retry is its cure. A delivery that failed verification is never kept: it
//! may come from anyone.
//!
//! A cap (count and bytes) bounds what is kept; past it the oldest are dropped, and counted.

use crate::db::{Database, DbError, DeadLetterLimits, Kept, NewDeadLetter, StoredDeadLetter};
use crate::domain::{Event, EventError, MessageId};
use crate::sync::{Outcome, SyncOptions};

/// Why a verified delivery cannot be applied, for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The body is not an event clerk-sync can apply.
    InvalidEvent,
    /// The application's table refuses the change.
    Refused,
}

impl Reason {
    /// The name stored and used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidEvent => "invalid_event",
            Reason::Refused => "refused",
        }
    }

    /// A verified body that does not parse is refused the same way on every retry: always a
    /// dead letter.
    pub fn of_event_error(_: &EventError) -> Self {
        Reason::InvalidEvent
    }

    /// Whether a database failure is one a retry will not cure.
    pub fn of_db_error(error: &DbError) -> Option<Self> {
        matches!(error, DbError::Refused(_)).then_some(Reason::Refused)
    }
}

/// Headers never kept: a proxy in front may add credentials of its own.
const NOT_KEPT: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// Keeps a verified delivery that failed for `reason` (see the module documentation).
pub async fn keep(
    db: &Database,
    id: &MessageId,
    headers: &http::HeaderMap,
    body: &[u8],
    reason: Reason,
    detail: &str,
    limits: DeadLetterLimits,
) -> Result<Option<Kept>, DbError> {
    if limits.max_count == 0 {
        return Ok(None);
    }
    let pairs: Vec<(&str, String)> = headers
        .iter()
        .filter(|(name, _)| !NOT_KEPT.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let headers = serde_json::to_string(&pairs)
        .map_err(|e| DbError::Internal(format!("encoding headers: {e}")))?;
    let letter = NewDeadLetter {
        svix_id: id.as_str().to_owned(),
        headers,
        // Verified bodies are UTF-8 (a body that is not cannot carry a valid signature).
        body: String::from_utf8_lossy(body).into_owned(),
        reason: reason.as_str(),
        detail: detail.to_owned(),
    };
    db.keep_dead_letter(letter, limits).await.map(Some)
}

/// What replaying one dead letter did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Applied with this outcome, and removed.
    Applied(Outcome),
    /// Dry run: it parses now; applying it is up to the database.
    WouldApply {
        /// The event's type.
        event_type: String,
    },
    /// It still fails, for this reason; kept.
    StillFails {
        /// Why.
        reason: Reason,
        /// The error's text.
        detail: String,
    },
}

/// Applies one stored dead letter again through the webhook rules: it was verified when it
/// arrived, so its signature is not checked again (the secret may have been rotated since).
/// Applied (whatever the outcome, `duplicate` included: Svix's own retry may have landed
/// since), it is removed. A transient database failure is returned as an error.
pub async fn replay_one(
    db: &Database,
    letter: &StoredDeadLetter,
    options: SyncOptions,
    dry_run: bool,
) -> Result<Replayed, DbError> {
    let parsed = MessageId::parse(&letter.svix_id)
        .and_then(|id| Event::parse(letter.body.as_bytes()).map(|event| (id, event)));
    let (id, event) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return Ok(still_invalid(&error)),
    };
    if dry_run {
        return Ok(Replayed::WouldApply {
            event_type: event.event_type().to_owned(),
        });
    }
    match super::ingest(db, &id, &event, options).await {
        Ok(outcome) => {
            db.remove_dead_letter(&letter.svix_id).await?;
            Ok(Replayed::Applied(outcome))
        }
        Err(error) => match Reason::of_db_error(&error) {
            Some(reason) => Ok(Replayed::StillFails {
                reason,
                detail: error.to_string(),
            }),
            None => Err(error),
        },
    }
}

fn still_invalid(error: &EventError) -> Replayed {
    Replayed::StillFails {
        reason: Reason::of_event_error(error),
        detail: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_a_retry_cannot_cure_are_dead_letters() {
        assert_eq!(
            Reason::of_db_error(&DbError::Refused("check".into())),
            Some(Reason::Refused)
        );
        for passing in [
            DbError::Unavailable("timeout".into()),
            DbError::NotMigrated(1),
            DbError::Internal("bug".into()),
            DbError::Incompatible("column".into()),
        ] {
            assert_eq!(Reason::of_db_error(&passing), None, "{passing}");
        }
        assert_eq!(
            Reason::of_event_error(&EventError::MissingField("data.id")),
            Reason::InvalidEvent
        );
    }
}
