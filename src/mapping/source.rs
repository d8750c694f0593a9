//! What can fill a column: a field of Clerk's user object, a derived value (the primary address,
//! the full name, the role), a metadata path, or a constant.
//!
//! The spelling of a source is the one `clerk-sync.toml` uses in `[user.fields]`; [`Source`]'s
//! `Display` writes it back, so `clerk-sync mapping` prints what a config line would say.

use std::fmt;

/// A field of Clerk's user object that can be copied into a column as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserField {
    /// `first_name`
    FirstName,
    /// `last_name`
    LastName,
    /// `username`
    Username,
    /// `image_url`
    ImageUrl,
    /// `profile_image_url` (deprecated by Clerk, still sent)
    ProfileImageUrl,
    /// `external_id`
    ExternalId,
    /// `primary_email_address_id`
    PrimaryEmailAddressId,
    /// `primary_phone_number_id`
    PrimaryPhoneNumberId,
    /// `created_at`
    CreatedAt,
    /// `updated_at`
    UpdatedAt,
    /// `last_sign_in_at`
    LastSignInAt,
    /// `last_active_at`
    LastActiveAt,
    /// `banned`
    Banned,
    /// `locked`
    Locked,
    /// `has_image`
    HasImage,
    /// `two_factor_enabled`
    TwoFactorEnabled,
    /// `password_enabled`
    PasswordEnabled,
}

/// What Clerk sends for a source, which decides the columns it may fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// A string (or null).
    Text,
    /// Milliseconds since the epoch (or null).
    Timestamp,
    /// `true` / `false`.
    Bool,
    /// Whatever JSON the metadata holds at the path.
    Any,
    /// A role matched to an enum's values.
    Role,
}

impl UserField {
    /// Every field, in the order the documentation lists them.
    pub const ALL: [UserField; 17] = [
        Self::FirstName,
        Self::LastName,
        Self::Username,
        Self::ImageUrl,
        Self::ProfileImageUrl,
        Self::ExternalId,
        Self::PrimaryEmailAddressId,
        Self::PrimaryPhoneNumberId,
        Self::CreatedAt,
        Self::UpdatedAt,
        Self::LastSignInAt,
        Self::LastActiveAt,
        Self::Banned,
        Self::Locked,
        Self::HasImage,
        Self::TwoFactorEnabled,
        Self::PasswordEnabled,
    ];

    /// The key in Clerk's user object.
    pub fn json_key(self) -> &'static str {
        match self {
            Self::FirstName => "first_name",
            Self::LastName => "last_name",
            Self::Username => "username",
            Self::ImageUrl => "image_url",
            Self::ProfileImageUrl => "profile_image_url",
            Self::ExternalId => "external_id",
            Self::PrimaryEmailAddressId => "primary_email_address_id",
            Self::PrimaryPhoneNumberId => "primary_phone_number_id",
            Self::CreatedAt => "created_at",
            Self::UpdatedAt => "updated_at",
            Self::LastSignInAt => "last_sign_in_at",
            Self::LastActiveAt => "last_active_at",
            Self::Banned => "banned",
            Self::Locked => "locked",
            Self::HasImage => "has_image",
            Self::TwoFactorEnabled => "two_factor_enabled",
            Self::PasswordEnabled => "password_enabled",
        }
    }

    /// What Clerk sends for it.
    pub fn value_type(self) -> ValueType {
        match self {
            Self::CreatedAt | Self::UpdatedAt | Self::LastSignInAt | Self::LastActiveAt => {
                ValueType::Timestamp
            }
            Self::Banned
            | Self::Locked
            | Self::HasImage
            | Self::TwoFactorEnabled
            | Self::PasswordEnabled => ValueType::Bool,
            _ => ValueType::Text,
        }
    }

    /// Clerk sends it on every user, never null: a required column it fills needs no fallback.
    pub fn always_present(self) -> bool {
        matches!(
            self,
            Self::CreatedAt
                | Self::UpdatedAt
                | Self::Banned
                | Self::Locked
                | Self::HasImage
                | Self::TwoFactorEnabled
                | Self::PasswordEnabled
        )
    }
}

/// Which of the user's three metadata objects a path reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataKind {
    /// `public_metadata`
    Public,
    /// `unsafe_metadata`
    Unsafe,
    /// `private_metadata`
    Private,
}

impl MetadataKind {
    /// The key in Clerk's user object.
    pub fn json_key(self) -> &'static str {
        match self {
            Self::Public => "public_metadata",
            Self::Unsafe => "unsafe_metadata",
            Self::Private => "private_metadata",
        }
    }
}

/// A constant written into a column on every write.
#[derive(Debug, Clone, PartialEq)]
pub enum Constant {
    /// `"const:text"`
    Text(String),
    /// A TOML integer.
    Int(i64),
    /// A TOML float.
    Float(f64),
    /// A TOML boolean.
    Bool(bool),
}

impl fmt::Display for Constant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(s) => write!(f, "const:{s}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// What fills a column on each write.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A field of the user object, copied.
    User(UserField),
    /// The primary email address (`primary_email_address_id` looked up in `email_addresses`).
    PrimaryEmail,
    /// The primary phone number (`primary_phone_number_id` looked up in `phone_numbers`).
    PrimaryPhone,
    /// The name rule: `first last` trimmed, else `username`, else none.
    FullName,
    /// The role rule: `public_metadata.role` matched case-insensitively to the enum's values;
    /// a value the enum does not have leaves the column alone.
    Role,
    /// The value at a path in one of the metadata objects.
    Metadata {
        /// Which object.
        kind: MetadataKind,
        /// The keys from the object down, at least one.
        path: Vec<String>,
    },
    /// The same value on every write.
    Constant(Constant),
}

/// A `[user.fields]` source that is not one clerk-sync knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Neither a user-object field nor any other source.
    #[error(
        "unknown source `{0}`: expected a user field ({fields}), primary_email, primary_phone, \
         full_name, role, public_metadata.<path>, unsafe_metadata.<path>, \
         private_metadata.<path>, const:<text>, or a number or boolean",
        fields = UserField::ALL.map(UserField::json_key).join(", ")
    )]
    Unknown(String),
    /// A metadata path with an empty key (`public_metadata.`, `public_metadata.a..b`).
    #[error("`{0}` has an empty key in its path")]
    EmptyPath(String),
    /// The Clerk id in `[user.fields]`.
    #[error("the Clerk id is not a `[user.fields]` source: name its field with `clerk_id = \"field\"` under [user]")]
    ClerkId,
}

impl Source {
    /// Parses a source as `[user.fields]` spells it (a string; numbers and booleans are
    /// constants and never reach here).
    pub fn parse(raw: &str) -> Result<Self, SourceError> {
        if let Some(text) = raw.strip_prefix("const:") {
            return Ok(Self::Constant(Constant::Text(text.to_owned())));
        }
        for kind in [
            MetadataKind::Public,
            MetadataKind::Unsafe,
            MetadataKind::Private,
        ] {
            if let Some(rest) = raw
                .strip_prefix(kind.json_key())
                .and_then(|r| r.strip_prefix('.'))
            {
                let path: Vec<String> = rest.split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(SourceError::EmptyPath(raw.to_owned()));
                }
                return Ok(Self::Metadata { kind, path });
            }
        }
        match raw {
            "primary_email" | "primary_email_address" | "email" => Ok(Self::PrimaryEmail),
            "primary_phone" | "primary_phone_number" | "phone" => Ok(Self::PrimaryPhone),
            "full_name" | "name" => Ok(Self::FullName),
            "role" => Ok(Self::Role),
            "id" | "clerk_id" | "user_id" => Err(SourceError::ClerkId),
            other => UserField::ALL
                .into_iter()
                .find(|f| f.json_key() == other)
                .map(Self::User)
                .ok_or_else(|| SourceError::Unknown(other.to_owned())),
        }
    }

    /// What Clerk sends for it (constants by their own type).
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::User(field) => field.value_type(),
            Self::PrimaryEmail | Self::PrimaryPhone | Self::FullName => ValueType::Text,
            Self::Role => ValueType::Role,
            Self::Metadata { .. } => ValueType::Any,
            Self::Constant(Constant::Text(_)) => ValueType::Text,
            Self::Constant(Constant::Bool(_)) => ValueType::Bool,
            Self::Constant(Constant::Int(_) | Constant::Float(_)) => ValueType::Any,
        }
    }

    /// Has a value on every user, so a required column it fills needs no fallback.
    pub fn always_present(&self) -> bool {
        match self {
            Self::User(field) => field.always_present(),
            Self::Constant(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(field) => f.write_str(field.json_key()),
            Self::PrimaryEmail => f.write_str("primary_email"),
            Self::PrimaryPhone => f.write_str("primary_phone"),
            Self::FullName => f.write_str("full_name"),
            Self::Role => f.write_str("role"),
            Self::Metadata { kind, path } => write!(f, "{}.{}", kind.json_key(), path.join(".")),
            Self::Constant(c) => write!(f, "{c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_spelling_reads_back_as_written() -> Result<(), SourceError> {
        for raw in [
            "first_name",
            "last_sign_in_at",
            "external_id",
            "primary_email",
            "primary_phone",
            "full_name",
            "role",
            "public_metadata.plan",
            "unsafe_metadata.profile.bio",
            "private_metadata.stripe.customer_id",
            "const:free",
        ] {
            assert_eq!(Source::parse(raw)?.to_string(), raw);
        }
        Ok(())
    }

    #[test]
    fn a_metadata_path_is_split_on_dots() {
        assert_eq!(
            Source::parse("public_metadata.a.b"),
            Ok(Source::Metadata {
                kind: MetadataKind::Public,
                path: vec!["a".to_owned(), "b".to_owned()],
            })
        );
    }

    #[test]
    fn unknown_sources_and_empty_paths_are_refused() {
        assert!(matches!(
            Source::parse("favourite_colour"),
            Err(SourceError::Unknown(s)) if s == "favourite_colour"
        ));
        assert!(matches!(
            Source::parse("public_metadata."),
            Err(SourceError::EmptyPath(_))
        ));
        assert!(matches!(
            Source::parse("public_metadata.a..b"),
            Err(SourceError::EmptyPath(_))
        ));
        assert_eq!(Source::parse("id"), Err(SourceError::ClerkId));
    }

    #[test]
    fn an_empty_constant_is_the_empty_string() {
        assert_eq!(
            Source::parse("const:"),
            Ok(Source::Constant(Constant::Text(String::new())))
        );
    }
}
