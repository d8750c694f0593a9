//! Clerk's webhook events as types that cannot be invalid.
//!
//! Everything a request can influence is parsed here, once, at the edge: a
//! [`ClerkUserId`] is a well-formed `user_…` id, a [`UserChange`] carries a name
//! already cut to the column's width and the primary address already chosen.
//! The code behind these types trusts them. Clerk adds fields over time, so
//! unknown fields are always accepted.

mod event;
mod outcome;
pub mod table;
mod user;
mod value;

pub use event::{ApiUser, Event, EventError};
pub use outcome::Outcome;
pub use user::{ClerkUserId, EmailAddress, Role, UserChange, UserProfile};
pub use value::Value;

/// Lowercase hex, two digits a byte: how digests and derived ids are written (stored
/// values compare with it, so it never changes).
pub fn lower_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 15)]));
    }
    hex
}

/// The Svix message id of a delivery (`svix-id`), the key deliveries are deduplicated by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId(String);

impl MessageId {
    /// Longest id accepted; Svix ids are about 30 characters.
    pub const MAX_LEN: usize = 255;

    /// Accepts a non-empty, printable ASCII id of at most [`Self::MAX_LEN`] bytes.
    pub fn parse(raw: &str) -> Result<Self, EventError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || !raw.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(EventError::InvalidMessageId);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A timestamp as Prisma Client writes it on SQLite: UTC, three decimals, `+00:00`
/// (`2024-05-01T12:34:56.789+00:00`), so that the application's Prisma queries filter and sort
/// what clerk-sync writes. The one place this form is made, for the SQLite port and the mapping.
pub fn prisma_sqlite_date(at: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // Written digit by digit: a format string is parsed again on every call, which cost more
    // than the rest of a row's write (BENCHMARKS.md, session 10). Clerk's times are years
    // 1970 to 9999 (see `EventError::OutOfRange`); others are clamped into four digits.
    fn digits(out: &mut String, value: u32, width: u32) {
        for place in (0..width).rev() {
            let digit = (value / 10_u32.pow(place)) % 10;
            out.push(char::from(b'0' + digit as u8));
        }
    }
    // The calendar fields of the UTC time, read once (each of `DateTime`'s own accessors
    // converts it again).
    let at = at.naive_utc();
    let mut out = String::with_capacity(29);
    digits(&mut out, at.year().clamp(0, 9999).unsigned_abs(), 4);
    out.push('-');
    digits(&mut out, at.month(), 2);
    out.push('-');
    digits(&mut out, at.day(), 2);
    out.push('T');
    digits(&mut out, at.hour(), 2);
    out.push(':');
    digits(&mut out, at.minute(), 2);
    out.push(':');
    digits(&mut out, at.second(), 2);
    out.push('.');
    digits(&mut out, (at.nanosecond() % 1_000_000_000) / 1_000_000, 3);
    out.push_str("+00:00");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn prisma_sqlite_dates_are_written_as_chrono_formats_them() {
        let mut ms: i64 = 0;
        for step in 0..20_000_i64 {
            ms = (ms + 7_919 * step * step + 123_456_789_011) % 253_402_300_799_999;
            let Some(at) = chrono::DateTime::from_timestamp_millis(ms) else {
                continue;
            };
            assert_eq!(
                super::prisma_sqlite_date(at),
                at.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
            );
        }
        let last = chrono::DateTime::from_timestamp_millis(253_402_300_799_999);
        assert_eq!(
            last.map(super::prisma_sqlite_date).as_deref(),
            Some("9999-12-31T23:59:59.999+00:00")
        );
    }
}
