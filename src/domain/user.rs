//! The user fields clerk-sync writes, derived from Clerk's user object.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
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
        // Compared in place, without lowering a copy: this runs for every address read.
        let name = self.0.trim_end_matches('.').as_bytes();
        name.len()
            .checked_sub(".invalid".len())
            .and_then(|start| name.get(start..))
            .is_some_and(|tld| tld.eq_ignore_ascii_case(b".invalid"))
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
    /// The rest of the user object a mapping may copy; shared, so a change clones cheaply.
    pub profile: Arc<UserProfile>,
}

/// The fields of Clerk's user object beyond those the rules need, for a mapping to copy.
///
/// A field of an unexpected JSON type reads as absent rather than failing the event: the rules
/// never need these, and a delivery must not be refused for a field no column takes.
#[derive(Clone, Default)]
pub struct UserProfile {
    /// `first_name`, as sent.
    pub first_name: Option<String>,
    /// `last_name`, as sent.
    pub last_name: Option<String>,
    /// `username`, as sent.
    pub username: Option<String>,
    /// `image_url`
    pub image_url: Option<String>,
    /// `profile_image_url` (deprecated by Clerk, still sent)
    pub profile_image_url: Option<String>,
    /// `external_id`
    pub external_id: Option<String>,
    /// `primary_email_address_id`
    pub primary_email_address_id: Option<String>,
    /// `primary_phone_number_id`
    pub primary_phone_number_id: Option<String>,
    /// The primary phone number: the entry of `phone_numbers` whose `id` is
    /// `primary_phone_number_id`.
    pub primary_phone: Option<String>,
    /// `last_sign_in_at`
    pub last_sign_in_at: Option<DateTime<Utc>>,
    /// `last_active_at`
    pub last_active_at: Option<DateTime<Utc>>,
    /// `banned`
    pub banned: Option<bool>,
    /// `locked`
    pub locked: Option<bool>,
    /// `has_image`
    pub has_image: Option<bool>,
    /// `two_factor_enabled`
    pub two_factor_enabled: Option<bool>,
    /// `password_enabled`
    pub password_enabled: Option<bool>,
    /// `public_metadata`
    pub public_metadata: Option<serde_json::Value>,
    /// `unsafe_metadata`, as sent: read by [`Self::unsafe_metadata`] when a mapping copies
    /// from it, so that no delivery pays for reading what no column takes.
    pub unsafe_metadata_json: Option<Box<RawValue>>,
    /// `private_metadata`, as sent: see [`Self::private_metadata`].
    pub private_metadata_json: Option<Box<RawValue>>,
}

impl UserProfile {
    /// `unsafe_metadata` (absent when it is not JSON clerk-sync can read).
    pub fn unsafe_metadata(&self) -> Option<serde_json::Value> {
        read_raw(self.unsafe_metadata_json.as_deref())
    }

    /// `private_metadata` (absent when it is not JSON clerk-sync can read).
    pub fn private_metadata(&self) -> Option<serde_json::Value> {
        read_raw(self.private_metadata_json.as_deref())
    }
}

impl PartialEq for UserProfile {
    fn eq(&self, other: &Self) -> bool {
        let raw = |r: &Option<Box<RawValue>>| r.as_deref().map(RawValue::get).map(str::to_owned);
        self.first_name == other.first_name
            && self.last_name == other.last_name
            && self.username == other.username
            && self.image_url == other.image_url
            && self.profile_image_url == other.profile_image_url
            && self.external_id == other.external_id
            && self.primary_email_address_id == other.primary_email_address_id
            && self.primary_phone_number_id == other.primary_phone_number_id
            && self.primary_phone == other.primary_phone
            && self.last_sign_in_at == other.last_sign_in_at
            && self.last_active_at == other.last_active_at
            && self.banned == other.banned
            && self.locked == other.locked
            && self.has_image == other.has_image
            && self.two_factor_enabled == other.two_factor_enabled
            && self.password_enabled == other.password_enabled
            && self.public_metadata == other.public_metadata
            && raw(&self.unsafe_metadata_json) == raw(&other.unsafe_metadata_json)
            && raw(&self.private_metadata_json) == raw(&other.private_metadata_json)
    }
}

impl Eq for UserProfile {}

/// A JSON value kept as sent, read (`None` when absent, `null` or unreadable).
fn read_raw(raw: Option<&RawValue>) -> Option<serde_json::Value> {
    serde_json::from_str(raw?.get())
        .ok()
        .filter(|v: &serde_json::Value| !v.is_null())
}

// Names, addresses, phone numbers and metadata are personal data: only flags are shown.
impl std::fmt::Debug for UserProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserProfile")
            .field("banned", &self.banned)
            .field("locked", &self.locked)
            .field("has_phone", &self.primary_phone.is_some())
            .finish_non_exhaustive()
    }
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
    #[serde(default)]
    unsafe_metadata: Option<Box<RawValue>>,
    #[serde(default)]
    private_metadata: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "lenient_text")]
    image_url: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    profile_image_url: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    external_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_text")]
    primary_phone_number_id: Option<String>,
    #[serde(default)]
    phone_numbers: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "lenient_millis")]
    last_sign_in_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient_millis")]
    last_active_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient_flag")]
    banned: Option<bool>,
    #[serde(default, deserialize_with = "lenient_flag")]
    locked: Option<bool>,
    #[serde(default, deserialize_with = "lenient_flag")]
    has_image: Option<bool>,
    #[serde(default, deserialize_with = "lenient_flag")]
    two_factor_enabled: Option<bool>,
    #[serde(default, deserialize_with = "lenient_flag")]
    password_enabled: Option<bool>,
}

/// One JSON value, kept only when it is a string, a whole number or a boolean; anything else
/// is skipped without being built.
enum Scalar {
    Text(String),
    Whole(i64),
    Flag(bool),
    Other,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Flag(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Whole(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(i64::try_from(v).map_or(Scalar::Other, Scalar::Whole))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }

    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        Scalar::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

/// A string, or absent when the field holds anything else.
fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Scalar::deserialize(d)? {
        Scalar::Text(text) => Some(text),
        _ => None,
    })
}

/// Whole milliseconds, or absent when the field holds anything else.
fn lenient_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Scalar::deserialize(d)? {
        Scalar::Whole(ms) => Some(ms),
        _ => None,
    })
}

/// A boolean, or absent when the field holds anything else.
fn lenient_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match Scalar::deserialize(d)? {
        Scalar::Flag(flag) => Some(flag),
        _ => None,
    })
}

/// The number of the `phone_numbers` entry whose `id` is `primary` (the list read only when
/// there is a primary to find).
fn primary_phone(numbers: Option<&RawValue>, primary: Option<&str>) -> Option<String> {
    let primary = primary?;
    let numbers: serde_json::Value = serde_json::from_str(numbers?.get()).ok()?;
    numbers
        .as_array()?
        .iter()
        .find(|n| n.get("id").and_then(serde_json::Value::as_str) == Some(primary))?
        .get("phone_number")?
        .as_str()
        .map(str::to_owned)
}

/// An optional time field; one out of range reads as absent, as no rule needs it.
fn optional_time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    timestamp(ms, "").ok()
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

/// What a user object must hold to be applied at all: its id, times and primary address.
type Checked = (
    ClerkUserId,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<EmailAddress>,
);

impl UserObject {
    /// The fields whose absence or invalidity refuses the object; see [`Checked`].
    fn checked(&self) -> Result<Checked, EventError> {
        let id = ClerkUserId::parse(
            self.id
                .as_deref()
                .ok_or(EventError::MissingField("data.id"))?,
        )?;
        let created_at = timestamp(self.created_at, "data.created_at")?;
        let updated_at = timestamp(self.updated_at, "data.updated_at")?;
        let email = match (&self.primary_email_address_id, &self.email_addresses) {
            (Some(primary), Some(addresses)) => addresses
                .iter()
                .find(|a| a.id.as_deref() == Some(primary.as_str()))
                .and_then(|a| a.email_address.as_deref())
                .map(EmailAddress::parse)
                .transpose()?,
            _ => None,
        };
        Ok((id, created_at, updated_at, email))
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

/// A part of a name without control characters, trimmed; borrowed unless it holds a control
/// character (rare), as names are read for every user.
fn clean_name_part(part: Option<&str>) -> Cow<'_, str> {
    let part = part.unwrap_or("");
    if part.chars().any(char::is_control) {
        Cow::Owned(
            part.chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
                .trim()
                .to_owned(),
        )
    } else {
        Cow::Borrowed(part.trim())
    }
}

/// The name rule: `first last` trimmed, else `username`, else none; cut to 255 characters.
/// Control characters (NUL above all, which PostgreSQL cannot store) are dropped first, so
/// that both backends store the same name and no delivery fails for ever on one.
fn display_name(first: Option<&str>, last: Option<&str>, username: Option<&str>) -> Option<String> {
    // Both parts are trimmed: `first last` needs no trimming of its own.
    let mut chosen = match (clean_name_part(first), clean_name_part(last)) {
        (first, last) if first.is_empty() && last.is_empty() => {
            clean_name_part(username).into_owned()
        }
        (first, last) if last.is_empty() => first.into_owned(),
        (first, last) if first.is_empty() => last.into_owned(),
        (first, last) => [first.as_ref(), last.as_ref()].join(" "),
    };
    if chosen.is_empty() {
        return None;
    }
    if let Some((cut, _)) = chosen.char_indices().nth(COLUMN_WIDTH) {
        chosen.truncate(cut);
    }
    Some(chosen)
}

impl UserObject {
    pub(super) fn into_change(self) -> Result<UserChange, EventError> {
        self.into_change_or_id().map_err(|(error, _)| error)
    }

    /// [`Self::into_change`]; on failure, with the `id` the object names, if any.
    pub(super) fn into_change_or_id(self) -> Result<UserChange, (EventError, Option<String>)> {
        let (id, created_at, updated_at, email) = match self.checked() {
            Ok(checked) => checked,
            Err(error) => return Err((error, self.id)),
        };
        let name = display_name(
            self.first_name.as_deref(),
            self.last_name.as_deref(),
            self.username.as_deref(),
        );
        // The reserved .invalid domain holds clerk-sync's placeholders and no real mailbox:
        // such an address is no email at all (and can never collide with a placeholder).
        let email = email.filter(|e| !e.is_reserved());
        let role = Role::from_metadata(self.public_metadata.as_ref());
        let digest = digest(&name, email.as_ref(), role, created_at.timestamp_millis());
        let profile = UserProfile {
            primary_phone: primary_phone(
                self.phone_numbers.as_deref(),
                self.primary_phone_number_id.as_deref(),
            ),
            first_name: self.first_name,
            last_name: self.last_name,
            username: self.username,
            image_url: self.image_url,
            profile_image_url: self.profile_image_url,
            external_id: self.external_id,
            primary_email_address_id: self.primary_email_address_id,
            primary_phone_number_id: self.primary_phone_number_id,
            last_sign_in_at: optional_time(self.last_sign_in_at),
            last_active_at: optional_time(self.last_active_at),
            banned: self.banned,
            locked: self.locked,
            has_image: self.has_image,
            two_factor_enabled: self.two_factor_enabled,
            password_enabled: self.password_enabled,
            public_metadata: self.public_metadata,
            unsafe_metadata_json: self.unsafe_metadata,
            private_metadata_json: self.private_metadata,
        };
        Ok(UserChange {
            id,
            version: updated_at.timestamp_millis(),
            digest,
            name,
            email,
            role,
            created_at,
            updated_at,
            profile: Arc::new(profile),
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

    fn change(data: serde_json::Value) -> Result<UserChange, EventError> {
        let object: UserObject =
            serde_json::from_value(data).map_err(|e| EventError::Malformed(e.to_string()))?;
        object.into_change()
    }

    #[test]
    fn the_profile_keeps_what_a_mapping_may_copy() -> Result<(), EventError> {
        let change = change(serde_json::json!({
            "id": "user_1", "created_at": 1, "updated_at": 2,
            "first_name": "Ada", "image_url": "https://img.example/a.png",
            "external_id": "ext-7", "last_sign_in_at": 1_700_000_000_123_i64,
            "banned": true, "two_factor_enabled": false,
            "primary_phone_number_id": "idn_b",
            "phone_numbers": [
                {"id": "idn_a", "phone_number": "+15550000001"},
                {"id": "idn_b", "phone_number": "+15550000002"}
            ],
            "public_metadata": {"plan": "pro"},
            "unsafe_metadata": {"bio": "hi"},
            "private_metadata": {"stripe": {"customer": "cus_1"}}
        }))?;
        let p = &change.profile;
        assert_eq!(p.first_name.as_deref(), Some("Ada"));
        assert_eq!(p.image_url.as_deref(), Some("https://img.example/a.png"));
        assert_eq!(p.external_id.as_deref(), Some("ext-7"));
        assert_eq!(
            p.last_sign_in_at.map(|t| t.timestamp_millis()),
            Some(1_700_000_000_123)
        );
        assert_eq!((p.banned, p.locked), (Some(true), None));
        assert_eq!(p.two_factor_enabled, Some(false));
        // The primary phone is chosen by id, not position.
        assert_eq!(p.primary_phone.as_deref(), Some("+15550000002"));
        assert_eq!(
            p.private_metadata()
                .and_then(|m| m.pointer("/stripe/customer").cloned()),
            Some(serde_json::json!("cus_1"))
        );
        assert_eq!(
            p.unsafe_metadata().and_then(|m| m.get("bio").cloned()),
            Some(serde_json::json!("hi"))
        );
        Ok(())
    }

    #[test]
    fn a_profile_field_of_an_unexpected_type_is_absent_not_an_error() -> Result<(), EventError> {
        let change = change(serde_json::json!({
            "id": "user_1", "created_at": 1, "updated_at": 2,
            "image_url": 5, "banned": "no", "last_active_at": "yesterday",
            "phone_numbers": "none", "primary_phone_number_id": "idn_a",
            "last_sign_in_at": -5, "external_id": {"nested": [1, {"deep": true}]},
            "locked": [true], "has_image": null, "profile_image_url": ["a"],
            "private_metadata": "not an object", "unsafe_metadata": null
        }))?;
        let p = &change.profile;
        assert_eq!(p.external_id, None);
        assert_eq!(p.profile_image_url, None);
        assert_eq!((p.locked, p.has_image), (None, None));
        assert_eq!(
            p.private_metadata(),
            Some(serde_json::json!("not an object"))
        );
        assert_eq!(p.unsafe_metadata(), None);
        assert_eq!(p.image_url, None);
        assert_eq!(p.banned, None);
        assert_eq!(p.last_active_at, None);
        assert_eq!(p.last_sign_in_at, None);
        assert_eq!(p.primary_phone, None);
        Ok(())
    }

    #[test]
    fn whole_milliseconds_only_and_a_fraction_is_absent() -> Result<(), EventError> {
        let change = change(serde_json::json!({
            "id": "user_1", "created_at": 1, "updated_at": 2,
            "last_sign_in_at": 1.5, "last_active_at": 18_446_744_073_709_551_615_u64
        }))?;
        assert_eq!(change.profile.last_sign_in_at, None);
        assert_eq!(change.profile.last_active_at, None);
        Ok(())
    }

    #[test]
    fn debug_never_shows_the_profile_s_personal_data() -> Result<(), EventError> {
        let change = change(serde_json::json!({
            "id": "user_1", "created_at": 1, "updated_at": 2,
            "first_name": "Ada", "last_name": "Lovelace",
            "primary_phone_number_id": "idn_a",
            "phone_numbers": [{"id": "idn_a", "phone_number": "+15550000001"}],
            "private_metadata": {"secret": "s3cr3t"}
        }))?;
        let shown = format!("{change:?} {:?}", change.profile);
        for private in ["Ada", "Lovelace", "+1555", "s3cr3t"] {
            assert!(!shown.contains(private), "{shown}");
        }
        Ok(())
    }

    #[test]
    fn reserved_addresses_are_told_in_any_case_and_with_trailing_dots() -> Result<(), EventError> {
        for (address, reserved) in [
            ("a@host.invalid", true),
            ("a@host.INVALID", true),
            ("a@host.Invalid..", true),
            ("a@.invalid", true),
            ("a@invalid", false),
            ("a@host.invalidx", false),
            ("a@host.ınvalid", false),
            ("a@example.com", false),
        ] {
            assert_eq!(
                EmailAddress::parse(address)?.is_reserved(),
                reserved,
                "{address}"
            );
        }
        Ok(())
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
