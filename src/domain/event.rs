//! The webhook envelope: `{type, data, object, timestamp, instance_id, …}`.

use serde::Deserialize;

use super::user::{DeletedObject, UserObject};
use super::{ClerkUserId, UserChange};

/// Why a verified body is not an event clerk-sync can apply (the sender's fault: 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The body is not JSON, or not an object of the expected shape.
    #[error("body is not a valid event: {0}")]
    Malformed(String),
    /// A field clerk-sync needs is absent or null.
    #[error("{0} is missing")]
    MissingField(&'static str),
    /// `data.id` is not a Clerk user id.
    #[error("data.id is not a Clerk user id (user_…)")]
    InvalidUserId,
    /// The primary email address does not fit the application's column.
    #[error("the primary email address is blank, too long or not an address")]
    InvalidEmail,
    /// A time field is negative or beyond year 9999.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    /// The `svix-id` header is not a usable id.
    #[error("svix-id is empty, too long or not printable ASCII")]
    InvalidMessageId,
}

/// A parsed event: what clerk-sync will do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `user.created` or `user.updated`.
    Upsert {
        /// The event type as sent.
        event_type: String,
        /// The user fields to write.
        change: UserChange,
    },
    /// `user.deleted`.
    Delete {
        /// The deleted user.
        id: ClerkUserId,
    },
    /// Any other event type: recorded and answered `ignored`.
    Ignored {
        /// The event type as sent.
        event_type: String,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    event_type: Option<String>,
    // Kept raw: parsed once, into the shape the event type calls for.
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// One user object of Clerk's users list, as the `user.updated` that would carry it; or why
/// it cannot be applied, with the `id` it names (a string), if any.
pub type ApiUser = Result<Event, (EventError, Option<String>)>;

/// The `id` alone of an object that cannot be read as a user.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<String>,
}

/// Longest event type recorded; Clerk's are short (`organizationMembership.created`).
const MAX_TYPE_LEN: usize = 100;

impl Event {
    /// Parses a (verified) webhook body.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let envelope: Envelope =
            serde_json::from_slice(body).map_err(|e| EventError::Malformed(e.to_string()))?;
        let event_type = envelope
            .event_type
            .ok_or(EventError::MissingField("type"))?;
        if event_type.is_empty()
            || event_type.len() > MAX_TYPE_LEN
            || event_type.chars().any(char::is_control)
        {
            return Err(EventError::Malformed(
                "type is empty, too long or not printable".into(),
            ));
        }
        let data = || {
            envelope
                .data
                .map(serde_json::value::RawValue::get)
                .filter(|d| *d != "null")
                .ok_or(EventError::MissingField("data"))
        };
        let malformed = |e: serde_json::Error| EventError::Malformed(format!("data: {e}"));
        match event_type.as_str() {
            "user.created" | "user.updated" => {
                let user: UserObject = serde_json::from_str(data()?).map_err(malformed)?;
                Ok(Event::Upsert {
                    change: user.into_change()?,
                    event_type,
                })
            }
            "user.deleted" => {
                let deleted: DeletedObject = serde_json::from_str(data()?).map_err(malformed)?;
                Ok(Event::Delete {
                    id: deleted.into_id()?,
                })
            }
            _ => Ok(Event::Ignored { event_type }),
        }
    }

    /// A user object as Clerk's Backend API returns it (`GET /v1/users`: the same object a
    /// webhook carries as `data`), as the `user.updated` upsert that would carry it.
    pub fn from_api_user(object: &str) -> Result<Self, EventError> {
        let user: UserObject = serde_json::from_str(object)
            .map_err(|e| EventError::Malformed(format!("user: {e}")))?;
        Ok(Event::Upsert {
            change: user.into_change()?,
            event_type: "user.updated".to_owned(),
        })
    }

    /// [`Self::from_api_user`]; on failure, with the `id` the object names (a string), if
    /// any.
    pub fn from_api_user_or_id(object: &str) -> ApiUser {
        Self::from_api_user(object).map_err(|error| {
            let id = serde_json::from_str::<IdOnly>(object)
                .ok()
                .and_then(|o| o.id);
            (error, id)
        })
    }

    /// A page of the Backend API's users list (a JSON array of user objects), each user as
    /// [`Self::from_api_user_or_id`] reads it, in one pass over the page. None when the page
    /// is not UTF-8 or not an array of objects of the user object's shape: one user that does
    /// not parse stops the pass, and the caller then reads each user on its own, to tell which
    /// ones fail and why.
    pub fn from_api_users(page: &[u8]) -> Option<Vec<ApiUser>> {
        // Reading the page as text first keeps what it accepts to what the one-by-one reading
        // accepts: that one checks every byte of each user object, including fields skipped.
        let text = std::str::from_utf8(page).ok()?;
        let users: Vec<UserObject> = serde_json::from_str(text).ok()?;
        Some(
            users
                .into_iter()
                .map(|user| {
                    Ok(Event::Upsert {
                        change: user.into_change_or_id()?,
                        event_type: "user.updated".to_owned(),
                    })
                })
                .collect(),
        )
    }

    /// The event type as sent.
    pub fn event_type(&self) -> &str {
        match self {
            Event::Upsert { event_type, .. } | Event::Ignored { event_type } => event_type,
            Event::Delete { .. } => "user.deleted",
        }
    }

    /// The Clerk user the event is about, if any.
    pub fn user_id(&self) -> Option<&ClerkUserId> {
        match self {
            Event::Upsert { change, .. } => Some(&change.id),
            Event::Delete { id } => Some(id),
            Event::Ignored { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_email_is_chosen_by_id_not_position() {
        let body = br#"{"type":"user.updated","data":{"id":"user_1","created_at":1,"updated_at":2,
            "primary_email_address_id":"idn_b","email_addresses":[
              {"id":"idn_a","email_address":"a@example.com"},{"id":"idn_b","email_address":"b@example.com"}]}}"#;
        let Ok(Event::Upsert { change, .. }) = Event::parse(body) else {
            panic!("not an upsert")
        };
        assert_eq!(
            change.email.as_ref().map(|e| e.as_str()),
            Some("b@example.com")
        );
    }

    #[test]
    fn a_primary_id_matching_no_address_means_no_email() {
        let body = br#"{"type":"user.created","data":{"id":"user_1","created_at":1,"updated_at":2,
            "primary_email_address_id":"idn_x","email_addresses":[]}}"#;
        let Ok(Event::Upsert { change, .. }) = Event::parse(body) else {
            panic!("not an upsert")
        };
        assert!(change.email.is_none());
    }

    #[test]
    fn wrong_types_are_malformed_not_panics() {
        for body in [
            &br#"{"type":"user.created","data":{"id":5}}"#[..],
            br#"{"type":"user.created","data":{"id":"user_1","created_at":"x","updated_at":2}}"#,
            br#"{"type":"user.created","data":[]}"#,
            br#"{"type":7}"#,
            br#"[]"#,
        ] {
            assert!(
                matches!(Event::parse(body), Err(EventError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn unknown_types_are_ignored_and_unknown_fields_accepted() {
        let body = br#"{"type":"session.created","data":{"anything":1},"brand_new_field":true}"#;
        assert_eq!(
            Event::parse(body),
            Ok(Event::Ignored {
                event_type: "session.created".into()
            })
        );
    }
}
