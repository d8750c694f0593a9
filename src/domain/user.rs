//! The user fields clerk-sync writes, derived from Clerk's user object.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::EventError;

/// The width of the application's `name` and `mail_address` columns (`VARCHAR(255)`).
const COLUMN_WIDTH: usize = 255;

/// A Clerk user id: `user_` followed by letters, digits, `_` or `-`, at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClerkUserId(String);

impl ClerkUserId {
    /// Parses a user id as Clerk issues them.
    pub fn parse(raw: &str) -> Result<Self, EventError> {
        let rest = raw.strip_prefix("user_").ok_or(EventError::InvalidUserId)?;
        let valid = !rest.is_empty()
            && raw.len() <= 128
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(EventError::InvalidUserId)
        }
    }

    /// The id as Clerk sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClerkUserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A primary email address that fits the application's column.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Accepts a non-blank address of at most 255 characters without control characters.
    pub fn parse(raw: &str) -> Result<Self, EventError> {
        let valid = !raw.trim().is_empty()
            && raw.chars().count() <= COLUMN_WIDTH
            && !raw.chars().any(char::is_control)
            && raw.contains('@');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(EventError::InvalidEmail)
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Under the reserved `.invalid` top-level domain (RFC 2606), where no mailbox exists.
    pub fn is_reserved(&self) -> bool {
        let lower = self.0.trim_end_matches('.').to_ascii_lowercase();
        lower.ends_with(".invalid")
    }
}

// Addresses are personal data: never printed by `Debug`.
impl std::fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmailAddress([redacted])")
    }
}

/// The application's `Role` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `ADMIN`
    Admin,
    /// `USER`
    User,
}

impl Role {
    /// The enum value exactly as the application's Prisma schema names it.
    pub fn as_db(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
            Role::User => "USER",
        }
    }

    /// `public_metadata.role` when it is `admin` or `user` in any case; anything else says nothing.
    fn from_metadata(metadata: Option<&serde_json::Value>) -> Option<Self> {
        let role = metadata?.get("role")?.as_str()?;
        if role.eq_ignore_ascii_case("admin") {
            Some(Role::Admin)
        } else if role.eq_ignore_ascii_case("user") {
            Some(Role::User)
        } else {
            None
        }
    }
}

/// What one `user.created` / `user.updated` asks of the table.
#[derive(Clone, PartialEq, Eq)]
pub struct UserChange {
    /// The Clerk user.
    pub id: ClerkUserId,
    /// Clerk's `updated_at` in ms: the version that orders this user's changes.
    pub version: i64,
    /// A digest of the fields written, to settle two versions with equal `updated_at`.
    pub digest: String,
    /// The name column: first + last name, else username, else none; at most 255 characters.
    pub name: Option<String>,
    /// The primary address, or none when the user has no email at all.
    pub email: Option<EmailAddress>,
    /// The role named by `public_metadata.role`; none leaves the column alone.
    pub role: Option<Role>,
    /// Clerk's `created_at`.
    pub created_at: DateTime<Utc>,
    /// Clerk's `updated_at`.
    pub updated_at: DateTime<Utc>,
}

// Names and addresses are personal data: `Debug` shows only what logs may carry.
impl std::fmt::Debug for UserChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserChange")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("has_email", &self.email.is_some())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The fields of Clerk's user object that clerk-sync reads; everything else is ignored.
#[derive(Deserialize)]
pub(super) struct UserObject {
    id: Option<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    primary_email_address_id: Option<String>,
    #[serde(default)]
    email_addresses: Option<Vec<EmailAddressObject>>,
    #[serde(default)]
    public_metadata: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EmailAddressObject {
    id: Option<String>,
    email_address: Option<String>,
}

/// The `data` of a `user.deleted` event.
#[derive(Deserialize)]
pub(super) struct DeletedObject {
    id: Option<String>,
}

impl DeletedObject {
    pub(super) fn into_id(self) -> Result<ClerkUserId, EventError> {
        ClerkUserId::parse(
            self.id
                .as_deref()
                .ok_or(EventError::MissingField("data.id"))?,
        )
    }
}

fn timestamp(ms: Option<i64>, field: &'static str) -> Result<DateTime<Utc>, EventError> {
    let ms = ms.ok_or(EventError::MissingField(field))?;
    // Year 10000 and later cannot be written in Prisma's date format.
    const MAX_MS: i64 = 253_402_300_799_999;
    if !(0..=MAX_MS).contains(&ms) {
        return Err(EventError::OutOfRange(field));
    }
    DateTime::from_timestamp_millis(ms).ok_or(EventError::OutOfRange(field))
}

/// The name rule: `first last` trimmed, else `username`, else none; cut to 255 characters.
/// Control characters (NUL above all, which PostgreSQL cannot store) are dropped first, so
/// that both backends store the same name and no delivery fails for ever on one.
fn display_name(first: Option<&str>, last: Option<&str>, username: Option<&str>) -> Option<String> {
    let clean = |part: Option<&str>| -> String {
        part.unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .trim()
            .to_owned()
    };
    let full = format!("{} {}", clean(first), clean(last));
    let full = full.trim();
    let chosen = if full.is_empty() {
        clean(username)
    } else {
        full.to_owned()
    };
    if chosen.is_empty() {
        return None;
    }
    Some(chosen.chars().take(COLUMN_WIDTH).collect())
}

impl UserObject {
    pub(super) fn into_change(self) -> Result<UserChange, EventError> {
        let id = ClerkUserId::parse(
            self.id
                .as_deref()
                .ok_or(EventError::MissingField("data.id"))?,
        )?;
        let created_at = timestamp(self.created_at, "data.created_at")?;
        let updated_at = timestamp(self.updated_at, "data.updated_at")?;
        let name = display_name(
            self.first_name.as_deref(),
            self.last_name.as_deref(),
            self.username.as_deref(),
        );
        let email = match (&self.primary_email_address_id, &self.email_addresses) {
            (Some(primary), Some(addresses)) => addresses
                .iter()
                .find(|a| a.id.as_deref() == Some(primary.as_str()))
                .and_then(|a| a.email_address.as_deref())
                .map(EmailAddress::parse)
                .transpose()?,
            _ => None,
        };
        // The reserved .invalid domain holds clerk-sync's placeholders and no real mailbox:
        // such an address is no email at all (and can never collide with a placeholder).
        let email = email.filter(|e| !e.is_reserved());
        let role = Role::from_metadata(self.public_metadata.as_ref());
        let digest = digest(&name, email.as_ref(), role, created_at.timestamp_millis());
        Ok(UserChange {
            id,
            version: updated_at.timestamp_millis(),
            digest,
            name,
            email,
            role,
            created_at,
            updated_at,
        })
    }
}

/// A stable digest of the written fields. Two versions with equal `updated_at` but
/// different content are settled by it: the greater digest wins, whatever the arrival order.
fn digest(
    name: &Option<String>,
    email: Option<&EmailAddress>,
    role: Option<Role>,
    created_ms: i64,
) -> String {
    let mut hasher = Sha256::new();
    for part in [
        name.as_deref().unwrap_or("\u{0}"),
        email.map(EmailAddress::as_str).unwrap_or("\u{0}"),
        role.map(Role::as_db).unwrap_or("\u{0}"),
    ] {
        hasher.update(part.len().to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(created_ms.to_le_bytes());
    super::lower_hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_stable() -> Result<(), EventError> {
        // Stored digests settle ties against new ones: the function must never change.
        let email = EmailAddress::parse("ada@example.com")?;
        assert_eq!(
            digest(
                &Some("Ada Lovelace".to_owned()),
                Some(&email),
                Some(Role::Admin),
                1_700_000_000_000
            ),
            "fe9bfcbfb62826a9aa4dddbd9a3fae01d3809ef59db3f6e77301dc000bee87c6"
        );
        assert_eq!(
            digest(&None, None, None, 0),
            "425091532f062652fe60c574a2843efefbb67fcd945ce7be615fa4891c19ab56"
        );
        Ok(())
    }

    #[test]
    fn name_prefers_first_and_last_then_username() {
        assert_eq!(
            display_name(Some(" Ada "), Some("Lovelace"), Some("ada")).as_deref(),
            Some("Ada Lovelace")
        );
        assert_eq!(
            display_name(None, Some("Lovelace"), None).as_deref(),
            Some("Lovelace")
        );
        assert_eq!(
            display_name(Some(" "), None, Some("ada")).as_deref(),
            Some("ada")
        );
        assert_eq!(display_name(None, None, None), None);
        assert_eq!(display_name(Some(""), Some(""), Some("  ")), None);
    }

    #[test]
    fn control_characters_never_reach_a_name() {
        assert_eq!(
            display_name(Some("Ada\u{0}"), Some("Love\u{7}lace"), None).as_deref(),
            Some("Ada Lovelace")
        );
        assert_eq!(
            display_name(Some("\u{0}"), None, Some("ada")).as_deref(),
            Some("ada")
        );
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        let name = display_name(Some(&long), None, None).unwrap_or_default();
        assert_eq!(name.chars().count(), 255);
        assert!(name.chars().all(|c| c == 'é'));
    }

    #[test]
    fn user_ids_must_look_like_clerks() {
        assert!(ClerkUserId::parse("user_29w83sxmDNGwOuEthce5gg56FcC").is_ok());
        for bad in [
            "",
            "user_",
            "usr_abc",
            "user_a b",
            "user_ä",
            &format!("user_{}", "a".repeat(200)),
        ] {
            assert!(ClerkUserId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn role_comes_only_from_a_known_metadata_value() {
        let meta = |v: serde_json::Value| Role::from_metadata(Some(&v));
        assert_eq!(
            meta(serde_json::json!({"role": "ADMIN"})),
            Some(Role::Admin)
        );
        assert_eq!(meta(serde_json::json!({"role": "user"})), Some(Role::User));
        assert_eq!(meta(serde_json::json!({"role": "owner"})), None);
        assert_eq!(meta(serde_json::json!({"role": 1})), None);
        assert_eq!(meta(serde_json::json!({})), None);
    }
}
