//! `clerk-sync.toml`: what the conventions cannot guess.
//!
//! ```toml
//! [user]
//! model = "Account"              # the Prisma model (default: `User`, else the one with a Clerk id)
//! table = "accounts"             # or pick the model by its table (`@@map`) name
//! clerk_id = "clerkId"           # the field holding Clerk's user id
//! id = "cuid"                    # cuid | cuid2 | uuid | uuid7 | nanoid | database | clerk
//! delete = "soft:deletedAt"      # delete | soft:<field> (a Boolean or DateTime field)
//!
//! [user.fields]
//! plan = "public_metadata.plan"  # any source (see below)
//! credits = 10                   # a TOML number or boolean is a constant
//! tier = "const:free"            # a string constant is written `const:<text>`
//! nickname = "none"              # never written (overrides a convention)
//! ```
//!
//! Sources are the user object's fields (`first_name`, `last_name`, `username`, `image_url`,
//! `external_id`, `last_sign_in_at`, `created_at`, `updated_at`, …), `primary_email`,
//! `primary_phone`, `full_name`, `role`, `public_metadata.<path>`, `unsafe_metadata.<path>`,
//! `private_metadata.<path>`, `const:<text>`, a number or a boolean, or `none`.
//!
//! Policy: an unknown key anywhere is an error naming it, never ignored — a misspelt key would
//! otherwise silently leave a column to the conventions. Every value keeps its line, so the
//! mapping can say which line decided a column.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::source::{Constant, Source};

/// A `clerk-sync.toml` that cannot be used, with the line at fault when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clerk-sync.toml{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The 1-based line, when the fault has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// A value and the line it was written on.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Its 1-based line in `clerk-sync.toml`.
    pub line: usize,
}

/// `id = "..."`: how a new row's key is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// `cuid`: a cuid (version 1), as Prisma's `cuid()`.
    Cuid,
    /// `cuid2`: as Prisma's `cuid(2)`.
    Cuid2,
    /// `uuid`: a version 4 UUID, as Prisma's `uuid()`.
    Uuid,
    /// `uuid7`: a version 7 UUID, as Prisma's `uuid(7)`.
    Uuid7,
    /// `nanoid`: as Prisma's `nanoid()` (the schema's length when it declares one, else 21).
    Nanoid,
    /// `database`: the database makes it (`autoincrement()`, `dbgenerated(...)`).
    Database,
    /// `clerk`: the key is the Clerk id.
    Clerk,
}

impl KeyMode {
    fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "cuid" => Self::Cuid,
            "cuid2" => Self::Cuid2,
            "uuid" | "uuid4" => Self::Uuid,
            "uuid7" => Self::Uuid7,
            "nanoid" => Self::Nanoid,
            "database" => Self::Database,
            "clerk" => Self::Clerk,
            _ => return None,
        })
    }
}

/// `delete = "..."`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteRule {
    /// `delete`: the row is deleted.
    Delete,
    /// `soft:<field>`: the field is set (`true`, or the deletion's time) instead.
    Soft(String),
}

/// What one `[user.fields]` line says about a field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldFill {
    /// Fill it from this source.
    Source(Source),
    /// `"none"`: never write it.
    NotWritten,
}

/// One `[user.fields]` line.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRule {
    /// The Prisma field named on the left.
    pub field: String,
    /// What the right says.
    pub fill: FieldFill,
    /// Its line.
    pub line: usize,
}

/// The `[user]` section; every part is optional.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserConfig {
    /// `model = "..."`
    pub model: Option<Located<String>>,
    /// `table = "..."`
    pub table: Option<Located<String>>,
    /// `clerk_id = "..."`
    pub clerk_id: Option<Located<String>>,
    /// `id = "..."`
    pub id: Option<Located<KeyMode>>,
    /// `delete = "..."`
    pub delete: Option<Located<DeleteRule>>,
    /// `[user.fields]`, in line order.
    pub fields: Vec<FieldRule>,
}

impl UserConfig {
    /// The `[user.fields]` line about that field.
    pub fn field(&self, name: &str) -> Option<&FieldRule> {
        self.fields.iter().find(|r| r.field == name)
    }
}

/// A parsed `clerk-sync.toml`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// The `[user]` section (empty when the file has none).
    pub user: UserConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    user: Option<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    model: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    clerk_id: Option<Spanned<String>>,
    id: Option<Spanned<String>>,
    delete: Option<Spanned<String>>,
    #[serde(default)]
    fields: BTreeMap<String, Spanned<toml::Value>>,
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Parses the text of a `clerk-sync.toml`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let Some(user) = raw.user else {
            return Ok(Self::default());
        };
        let locate = |s: Spanned<String>| {
            let line = line_of(text, s.span().start);
            Located {
                value: s.into_inner(),
                line,
            }
        };
        let fail = |line: usize, message: String| ConfigError {
            line: Some(line),
            message,
        };
        let id = match user.id.map(locate) {
            None => None,
            Some(Located { value, line }) => Some(Located {
                value: KeyMode::parse(&value).ok_or_else(|| {
                    fail(
                        line,
                        format!(
                            "unknown `id` mode `{value}`: expected cuid, cuid2, uuid, uuid7, \
                             nanoid, database or clerk"
                        ),
                    )
                })?,
                line,
            }),
        };
        let delete = match user.delete.map(locate) {
            None => None,
            Some(Located { value, line }) => {
                let rule = if value == "delete" {
                    DeleteRule::Delete
                } else if let Some(field) = value.strip_prefix("soft:").filter(|f| !f.is_empty()) {
                    DeleteRule::Soft(field.to_owned())
                } else {
                    return Err(fail(
                        line,
                        format!("unknown `delete` mode `{value}`: expected delete or soft:<field>"),
                    ));
                };
                Some(Located { value: rule, line })
            }
        };
        let mut fields = Vec::with_capacity(user.fields.len());
        for (field, value) in user.fields {
            let line = line_of(text, value.span().start);
            let fill = match value.into_inner() {
                toml::Value::String(s) if s == "none" => FieldFill::NotWritten,
                toml::Value::String(s) => FieldFill::Source(
                    Source::parse(&s).map_err(|e| fail(line, format!("`{field}`: {e}")))?,
                ),
                toml::Value::Integer(i) => FieldFill::Source(Source::Constant(Constant::Int(i))),
                toml::Value::Float(x) => FieldFill::Source(Source::Constant(Constant::Float(x))),
                toml::Value::Boolean(b) => FieldFill::Source(Source::Constant(Constant::Bool(b))),
                _ => {
                    return Err(fail(
                        line,
                        format!(
                            "`{field}`: a source is a string, a number or a boolean \
                             (a text constant is \"const:<text>\")"
                        ),
                    ))
                }
            };
            fields.push(FieldRule { field, fill, line });
        }
        fields.sort_by_key(|r| r.line);
        Ok(Self {
            user: UserConfig {
                model: user.model.map(locate),
                table: user.table.map(locate),
                clerk_id: user.clerk_id.map(locate),
                id,
                delete,
                fields,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::source::MetadataKind;

    #[test]
    fn a_full_user_section_is_read_with_its_lines() -> Result<(), ConfigError> {
        let config = Config::parse(
            "[user]\nmodel = \"Account\"\nclerk_id = \"clerkId\"\nid = \"uuid7\"\n\
             delete = \"soft:deletedAt\"\n\n[user.fields]\nplan = \"public_metadata.plan\"\n\
             credits = 10\ntier = \"const:free\"\nnickname = \"none\"\n",
        )?;
        let user = &config.user;
        assert_eq!(
            user.model.as_ref().map(|m| (m.value.as_str(), m.line)),
            Some(("Account", 2))
        );
        assert_eq!(
            user.id.as_ref().map(|m| (m.value, m.line)),
            Some((KeyMode::Uuid7, 4))
        );
        assert_eq!(
            user.delete.as_ref().map(|d| &d.value),
            Some(&DeleteRule::Soft("deletedAt".to_owned()))
        );
        assert_eq!(
            user.field("plan"),
            Some(&FieldRule {
                field: "plan".to_owned(),
                fill: FieldFill::Source(Source::Metadata {
                    kind: MetadataKind::Public,
                    path: vec!["plan".to_owned()],
                }),
                line: 8,
            })
        );
        assert_eq!(
            user.field("credits").map(|r| &r.fill),
            Some(&FieldFill::Source(Source::Constant(Constant::Int(10))))
        );
        assert_eq!(
            user.field("tier").map(|r| &r.fill),
            Some(&FieldFill::Source(Source::Constant(Constant::Text(
                "free".to_owned()
            ))))
        );
        assert_eq!(
            user.field("nickname").map(|r| &r.fill),
            Some(&FieldFill::NotWritten)
        );
        Ok(())
    }

    #[test]
    fn an_empty_file_is_an_empty_config() -> Result<(), ConfigError> {
        assert_eq!(Config::parse("")?, Config::default());
        assert_eq!(Config::parse("# nothing\n[user]\n")?, Config::default());
        Ok(())
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = Config::parse("[user]\nmodel = \"User\"\nclerkid = \"x\"\n");
        let Err(err) = err else {
            panic!("an unknown key was accepted");
        };
        assert_eq!(err.line, Some(3));
        assert!(err.message.contains("clerkid"), "{err}");

        let Err(err) = Config::parse("[users]\n") else {
            panic!("an unknown section was accepted");
        };
        assert!(err.message.contains("users"), "{err}");
    }

    #[test]
    fn unknown_modes_and_sources_name_their_line() {
        for (text, line, word) in [
            ("[user]\nid = \"serial\"\n", 2, "serial"),
            ("[user]\n\ndelete = \"archive\"\n", 3, "archive"),
            ("[user]\ndelete = \"soft:\"\n", 2, "soft:"),
            ("[user.fields]\nplan = \"stripe.plan\"\n", 2, "stripe.plan"),
            ("[user.fields]\n\nplan = [1, 2]\n", 3, "plan"),
        ] {
            match Config::parse(text) {
                Ok(_) => panic!("{text:?} accepted"),
                Err(err) => {
                    assert_eq!(err.line, Some(line), "{text:?}: {err}");
                    assert!(err.to_string().contains(word), "{text:?}: {err}");
                }
            }
        }
    }
}
