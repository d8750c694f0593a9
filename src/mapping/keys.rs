//! New primary keys in the formats Prisma Client itself makes, for the keys Prisma Client (not
//! the database) generates: `cuid()`, `cuid(2)`, `uuid()`, `uuid(7)`, `nanoid()`.
//!
//! Policy: a key is made once, when clerk-sync inserts the row, and never changes after; keys
//! the database makes (`autoincrement()`, `dbgenerated(...)`) and the Clerk id as the key are
//! not made here at all ([`KeyGeneration::generate`] answers `None` for them).

use std::fmt;

/// The nanoid length Prisma uses when `nanoid()` names none.
pub const NANOID_DEFAULT_LENGTH: usize = 21;

/// How a new row's key comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyGeneration {
    /// clerk-sync makes a cuid (version 1): 25 characters, `c` then lowercase base 36.
    Cuid,
    /// clerk-sync makes a cuid2: 24 characters of lowercase base 36, a letter first.
    Cuid2,
    /// clerk-sync makes a version 4 UUID, hyphenated lowercase.
    Uuid4,
    /// clerk-sync makes a version 7 UUID, hyphenated lowercase.
    Uuid7,
    /// clerk-sync makes a nanoid of this length over `A-Za-z0-9_-`.
    Nanoid(usize),
    /// The database makes it: the column is left out of the insert.
    Database,
    /// The key is the Clerk user id itself.
    Clerk,
}

impl KeyGeneration {
    /// A new key, or `None` when clerk-sync does not make this kind.
    pub fn generate(self) -> Option<String> {
        Some(match self {
            Self::Cuid => cuid::cuid1(),
            Self::Cuid2 => cuid::cuid2(),
            Self::Uuid4 => uuid::Uuid::new_v4().hyphenated().to_string(),
            Self::Uuid7 => uuid::Uuid::now_v7().hyphenated().to_string(),
            Self::Nanoid(len) => nanoid::nanoid!(len),
            Self::Database | Self::Clerk => return None,
        })
    }

    /// clerk-sync makes the key (as opposed to the database or Clerk).
    pub fn is_made_here(self) -> bool {
        !matches!(self, Self::Database | Self::Clerk)
    }
}

impl fmt::Display for KeyGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cuid => f.write_str("a new cuid"),
            Self::Cuid2 => f.write_str("a new cuid2"),
            Self::Uuid4 => f.write_str("a new UUID v4"),
            Self::Uuid7 => f.write_str("a new UUID v7"),
            Self::Nanoid(len) => write!(f, "a new nanoid of {len} characters"),
            Self::Database => f.write_str("made by the database"),
            Self::Clerk => f.write_str("the Clerk user id"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(generation: KeyGeneration) -> String {
        generation.generate().unwrap_or_default()
    }

    fn base36(c: char) -> bool {
        c.is_ascii_digit() || c.is_ascii_lowercase()
    }

    #[test]
    fn a_cuid_is_25_base36_characters_after_c() {
        for _ in 0..100 {
            let id = key(KeyGeneration::Cuid);
            assert_eq!(id.len(), 25, "{id}");
            assert!(id.starts_with('c'), "{id}");
            assert!(id.chars().all(base36), "{id}");
        }
    }

    #[test]
    fn a_cuid2_is_24_base36_characters_starting_with_a_letter() {
        for _ in 0..100 {
            let id = key(KeyGeneration::Cuid2);
            assert_eq!(id.len(), 24, "{id}");
            assert!(id.starts_with(|c: char| c.is_ascii_lowercase()), "{id}");
            assert!(id.chars().all(base36), "{id}");
        }
    }

    fn assert_uuid(id: &str, version: usize) {
        let parsed = uuid::Uuid::parse_str(id).map(|u| u.get_version_num());
        assert_eq!(parsed, Ok(version), "{id}");
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id, id.to_ascii_lowercase(), "{id}");
        let dashes: Vec<usize> = id.match_indices('-').map(|(i, _)| i).collect();
        assert_eq!(dashes, [8, 13, 18, 23], "{id}");
    }

    #[test]
    fn uuids_are_hyphenated_lowercase_of_their_version() {
        assert_uuid(&key(KeyGeneration::Uuid4), 4);
        assert_uuid(&key(KeyGeneration::Uuid7), 7);
    }

    #[test]
    fn uuid7_keys_grow_with_time() {
        let first = key(KeyGeneration::Uuid7);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = key(KeyGeneration::Uuid7);
        assert!(first < second, "{first} then {second}");
    }

    #[test]
    fn a_nanoid_has_the_declared_length_over_the_url_alphabet() {
        for len in [NANOID_DEFAULT_LENGTH, 16, 2] {
            let id = key(KeyGeneration::Nanoid(len));
            assert_eq!(id.chars().count(), len, "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{id}"
            );
        }
    }

    #[test]
    fn keys_are_not_repeated() {
        let mut seen = std::collections::HashSet::new();
        for generation in [
            KeyGeneration::Cuid,
            KeyGeneration::Cuid2,
            KeyGeneration::Uuid4,
            KeyGeneration::Uuid7,
            KeyGeneration::Nanoid(21),
        ] {
            for _ in 0..1000 {
                assert!(
                    seen.insert(key(generation)),
                    "{generation:?} repeated a key"
                );
            }
        }
    }

    #[test]
    fn database_and_clerk_keys_are_not_made_here() {
        assert_eq!(KeyGeneration::Database.generate(), None);
        assert_eq!(KeyGeneration::Clerk.generate(), None);
    }
}
