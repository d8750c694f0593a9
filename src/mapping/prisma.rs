//! A small parser of Prisma schema files: what clerk-sync needs to know about the application's
//! models and enums, and nothing more.
//!
//! Policy: every construct the mapping depends on (field types and arity, `@id`, `@default`,
//! `@unique`, `@updatedAt`, `@map`, `@db.*`, `@relation`, `@@map`, `@@schema`, `@@id`,
//! `@@unique`, enums and their `@map`s, the datasource provider) is parsed exactly; other
//! attributes (`@@index`, `@ignore`, …) are parsed for their syntax and kept by name only, and
//! `generator`, `view` and `type` blocks are skipped whole. A file Prisma itself would refuse may
//! still parse here; a file Prisma accepts must. Every error names its (1-based) line.

use std::fmt;

/// A parse failure, with the line it happened on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Prisma schema, line {line}: {problem}")]
pub struct SchemaError {
    /// The 1-based line.
    pub line: usize,
    /// What was wrong there.
    pub problem: SchemaProblem,
}

/// What was wrong on the line a [`SchemaError`] names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaProblem {
    /// A `"` without its closing `"` on the same line.
    #[error("a string is not closed")]
    UnterminatedString,
    /// A character that starts no token.
    #[error("unexpected character `{0}`")]
    BadCharacter(char),
    /// A token where another was expected.
    #[error("expected {expected}, found {found}")]
    Unexpected {
        /// What the grammar wanted.
        expected: &'static str,
        /// What the line held instead.
        found: String,
    },
    /// A block opened and never closed.
    #[error("the `{0}` block is never closed")]
    Unclosed(String),
    /// A `}` outside any block.
    #[error("`}}` closes no block")]
    StrayBrace,
    /// A top-level keyword other than `model`, `enum`, `datasource`, `generator`, `view`, `type`.
    #[error("unknown block `{0}`")]
    UnknownBlock(String),
    /// A model, enum or field name used twice.
    #[error("`{0}` is declared twice")]
    Duplicate(String),
    /// An attribute whose arguments are not what it takes.
    #[error("`{attribute}` takes {expected}")]
    BadArguments {
        /// The attribute, with its `@`.
        attribute: String,
        /// What it takes.
        expected: &'static str,
    },
    /// A `@default(f())` with a function Prisma does not have.
    #[error("unknown default function `{0}()`")]
    UnknownDefault(String),
}

/// A parsed schema file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Schema {
    /// The `datasource` block's `provider` (`postgresql`, `sqlite`, …), when there is one.
    pub provider: Option<String>,
    /// The `model` blocks, in file order.
    pub models: Vec<Model>,
    /// The `enum` blocks, in file order.
    pub enums: Vec<Enum>,
}

/// A `model` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The model's name.
    pub name: String,
    /// The line of `model Name {`.
    pub line: usize,
    /// Its fields, relation fields included, in file order.
    pub fields: Vec<Field>,
    /// `@@map("...")`: the table's name when it is not the model's.
    pub map: Option<String>,
    /// `@@schema("...")`: the database schema (multi-schema projects).
    pub schema: Option<String>,
    /// `@@id([a, b])`: a compound primary key's fields.
    pub compound_id: Option<Vec<String>>,
    /// Each `@@unique([a, b])`'s fields.
    pub compound_unique: Vec<Vec<String>>,
}

impl Model {
    /// The table's name in the database (`@@map`, else the model's name).
    pub fn table_name(&self) -> &str {
        self.map.as_deref().unwrap_or(&self.name)
    }

    /// The field of that name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Unique on its own: `@unique`, `@id`, or a one-field `@@unique`/`@@id`.
    pub fn is_unique(&self, field: &Field) -> bool {
        let alone = |fields: &Vec<String>| fields.len() == 1 && fields[0] == field.name;
        field.unique
            || field.id
            || self.compound_unique.iter().any(alone)
            || self.compound_id.as_ref().is_some_and(alone)
    }
}

/// One field of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field's name in Prisma Client.
    pub name: String,
    /// Its line.
    pub line: usize,
    /// Its type as written, without `?` or `[]`.
    pub ty: FieldType,
    /// Required, optional (`?`) or a list (`[]`).
    pub arity: Arity,
    /// `@id`
    pub id: bool,
    /// `@unique`
    pub unique: bool,
    /// `@updatedAt`
    pub updated_at: bool,
    /// `@default(...)`
    pub default: Option<DefaultValue>,
    /// `@map("...")`: the column's name when it is not the field's.
    pub map: Option<String>,
    /// `@db.Name(args)`: the native database type.
    pub native: Option<NativeType>,
    /// `@relation(...)`: present on the side that holds the foreign key (and sometimes the other).
    pub relation: Option<Relation>,
    /// Any other attribute, by name with its `@` (`@ignore`, …).
    pub other_attributes: Vec<String>,
}

impl Field {
    /// The column's name in the database (`@map`, else the field's name).
    pub fn column_name(&self) -> &str {
        self.map.as_deref().unwrap_or(&self.name)
    }
}

/// A field's type as the schema writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// `String`
    String,
    /// `Boolean`
    Boolean,
    /// `Int`
    Int,
    /// `BigInt`
    BigInt,
    /// `Float`
    Float,
    /// `Decimal`
    Decimal,
    /// `DateTime`
    DateTime,
    /// `Json`
    Json,
    /// `Bytes`
    Bytes,
    /// `Unsupported("...")`, with the database type named inside.
    Unsupported(String),
    /// Any other name: an enum, a model (a relation) or a composite type.
    Named(String),
}

impl FieldType {
    fn from_name(name: &str) -> Self {
        match name {
            "String" => Self::String,
            "Boolean" => Self::Boolean,
            "Int" => Self::Int,
            "BigInt" => Self::BigInt,
            "Float" => Self::Float,
            "Decimal" => Self::Decimal,
            "DateTime" => Self::DateTime,
            "Json" => Self::Json,
            "Bytes" => Self::Bytes,
            other => Self::Named(other.to_owned()),
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String => f.write_str("String"),
            Self::Boolean => f.write_str("Boolean"),
            Self::Int => f.write_str("Int"),
            Self::BigInt => f.write_str("BigInt"),
            Self::Float => f.write_str("Float"),
            Self::Decimal => f.write_str("Decimal"),
            Self::DateTime => f.write_str("DateTime"),
            Self::Json => f.write_str("Json"),
            Self::Bytes => f.write_str("Bytes"),
            Self::Unsupported(db) => write!(f, "Unsupported({db:?})"),
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// Whether a field must hold a value, may be NULL, or is a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// No suffix: NOT NULL.
    Required,
    /// `?`: nullable.
    Optional,
    /// `[]`: a scalar list, or the many side of a relation.
    List,
}

/// `@db.Name(args)`, e.g. `VarChar` with `["255"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeType {
    /// The name after `@db.`.
    pub name: String,
    /// Its arguments as written (numbers mostly).
    pub args: Vec<String>,
}

/// `@relation(...)`, as far as the mapping cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Relation {
    /// `fields: [...]`: this model's foreign-key fields.
    pub fields: Vec<String>,
    /// `references: [...]`: the fields they point at.
    pub references: Vec<String>,
}

/// A `@default(...)` value.
#[derive(Debug, Clone, PartialEq)]
pub enum DefaultValue {
    /// `cuid()` (version 1) or `cuid(2)`: made by Prisma Client.
    Cuid(u8),
    /// `uuid()` (version 4), `uuid(4)` or `uuid(7)`: made by Prisma Client.
    Uuid(u8),
    /// `nanoid()` or `nanoid(n)`: made by Prisma Client.
    Nanoid(Option<usize>),
    /// `ulid()`: made by Prisma Client.
    Ulid,
    /// `autoincrement()`: made by the database.
    Autoincrement,
    /// `sequence(...)` (CockroachDB): made by the database.
    Sequence,
    /// `dbgenerated("...")`: made by the database, with the SQL when given.
    DbGenerated(Option<String>),
    /// `now()`: the database's current time.
    Now,
    /// `auto()` (MongoDB `ObjectId`): made by the database.
    Auto,
    /// A string constant.
    String(String),
    /// A numeric constant, as written.
    Number(String),
    /// `true` / `false`.
    Boolean(bool),
    /// A bare name: an enum value.
    EnumValue(String),
    /// `[...]`: a scalar list's default.
    List(Vec<DefaultValue>),
}

impl DefaultValue {
    /// Made by Prisma Client, not by the database: another writer must make it itself.
    pub fn is_client_side(&self) -> bool {
        matches!(
            self,
            Self::Cuid(_) | Self::Uuid(_) | Self::Nanoid(_) | Self::Ulid
        )
    }
}

impl fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cuid(1) => f.write_str("cuid()"),
            Self::Cuid(v) => write!(f, "cuid({v})"),
            Self::Uuid(4) => f.write_str("uuid()"),
            Self::Uuid(v) => write!(f, "uuid({v})"),
            Self::Nanoid(None) => f.write_str("nanoid()"),
            Self::Nanoid(Some(n)) => write!(f, "nanoid({n})"),
            Self::Ulid => f.write_str("ulid()"),
            Self::Autoincrement => f.write_str("autoincrement()"),
            Self::Sequence => f.write_str("sequence()"),
            Self::DbGenerated(None) => f.write_str("dbgenerated()"),
            Self::DbGenerated(Some(sql)) => write!(f, "dbgenerated({sql:?})"),
            Self::Now => f.write_str("now()"),
            Self::Auto => f.write_str("auto()"),
            Self::String(s) => write!(f, "{s:?}"),
            Self::Number(n) => f.write_str(n),
            Self::Boolean(b) => write!(f, "{b}"),
            Self::EnumValue(v) => f.write_str(v),
            Self::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// An `enum` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enum {
    /// The enum's name.
    pub name: String,
    /// The line of `enum Name {`.
    pub line: usize,
    /// Its values, in file order.
    pub values: Vec<EnumValue>,
    /// `@@map("...")`: the database type's name when it is not the enum's.
    pub map: Option<String>,
    /// `@@schema("...")`
    pub schema: Option<String>,
}

impl Enum {
    /// The database type's name (`@@map`, else the enum's name).
    pub fn db_name(&self) -> &str {
        self.map.as_deref().unwrap_or(&self.name)
    }
}

/// One value of an enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumValue {
    /// The value's name in Prisma Client (and in `@default`).
    pub name: String,
    /// `@map("...")`: the label stored in the database when it is not the name.
    pub map: Option<String>,
}

impl EnumValue {
    /// The label the database stores.
    pub fn db_label(&self) -> &str {
        self.map.as_deref().unwrap_or(&self.name)
    }
}

impl Schema {
    /// Parses a whole schema file.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        Parser::default().run(text)
    }

    /// The model of that name.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The enum of that name.
    pub fn enum_named(&self, name: &str) -> Option<&Enum> {
        self.enums.iter().find(|e| e.name == name)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    At,
    AtAt,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Question,
    Equals,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::At => f.write_str("`@`"),
            Tok::AtAt => f.write_str("`@@`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::LBrace => f.write_str("`{`"),
            Tok::RBrace => f.write_str("`}`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Colon => f.write_str("`:`"),
            Tok::Question => f.write_str("`?`"),
            Tok::Equals => f.write_str("`=`"),
        }
    }
}

/// Splits one physical line into tokens; a `//` comment ends it.
fn tokenize(line: &str) -> Result<Vec<Tok>, SchemaProblem> {
    let mut tokens = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let single = match c {
            c if c.is_whitespace() => continue,
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            ',' => Some(Tok::Comma),
            ':' => Some(Tok::Colon),
            '?' => Some(Tok::Question),
            '=' => Some(Tok::Equals),
            _ => None,
        };
        if let Some(tok) = single {
            tokens.push(tok);
            continue;
        }
        match c {
            '/' if chars.peek().map(|&(_, c)| c) == Some('/') => break,
            '@' => {
                if chars.peek().map(|&(_, c)| c) == Some('@') {
                    chars.next();
                    tokens.push(Tok::AtAt);
                } else {
                    tokens.push(Tok::At);
                }
            }
            '"' => {
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, 't')) => value.push('\t'),
                            Some((_, 'r')) => value.push('\r'),
                            Some((_, other)) => value.push(other),
                            None => break,
                        },
                        other => value.push(other),
                    }
                }
                if !closed {
                    return Err(SchemaProblem::UnterminatedString);
                }
                tokens.push(Tok::Str(value));
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                        end = i + c.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Tok::Num(line[start..end].to_owned()));
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' {
                        end = i + c.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Tok::Ident(line[start..end].to_owned()));
            }
            other => return Err(SchemaProblem::BadCharacter(other)),
        }
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------------
// Expressions (attribute arguments)

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Str(String),
    Num(String),
    Ident(String),
    Call(String, Vec<Arg>),
    List(Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
struct Arg {
    name: Option<String>,
    value: Expr,
}

/// A cursor over one logical line's tokens.
struct Tokens {
    toks: Vec<Tok>,
    pos: usize,
}

impl Tokens {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Tok> {
        self.toks.get(self.pos + ahead)
    }

    fn next(&mut self) -> Option<Tok> {
        let tok = self.toks.get(self.pos).cloned();
        self.pos += 1;
        tok
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "the end of the line".to_owned(), Tok::to_string)
    }

    fn expect(&mut self, tok: &Tok, expected: &'static str) -> Result<(), SchemaProblem> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn unexpected(&self, expected: &'static str) -> SchemaProblem {
        SchemaProblem::Unexpected {
            expected,
            found: self.found(),
        }
    }

    fn ident(&mut self, expected: &'static str) -> Result<String, SchemaProblem> {
        match self.peek() {
            Some(Tok::Ident(name)) => {
                let name = name.clone();
                self.pos += 1;
                Ok(name)
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn end(&self) -> Result<(), SchemaProblem> {
        if self.peek().is_none() {
            Ok(())
        } else {
            Err(self.unexpected("the end of the line"))
        }
    }

    /// `( arg, name: arg, … )` after the opening parenthesis has been seen (not eaten).
    fn args(&mut self) -> Result<Vec<Arg>, SchemaProblem> {
        self.expect(&Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        if self.eat(&Tok::RParen) {
            return Ok(args);
        }
        loop {
            let name = match (self.peek(), self.peek_at(1)) {
                (Some(Tok::Ident(name)), Some(Tok::Colon)) => {
                    let name = name.clone();
                    self.pos += 2;
                    Some(name)
                }
                _ => None,
            };
            let value = self.expr()?;
            args.push(Arg { name, value });
            if self.eat(&Tok::RParen) {
                return Ok(args);
            }
            self.expect(&Tok::Comma, "`,` or `)`")?;
        }
    }

    fn expr(&mut self) -> Result<Expr, SchemaProblem> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Str(s))
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Num(n))
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                if self.peek() == Some(&Tok::LParen) {
                    Ok(Expr::Call(name, self.args()?))
                } else {
                    Ok(Expr::Ident(name))
                }
            }
            Some(Tok::LBracket) => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(&Tok::RBracket) {
                    return Ok(Expr::List(items));
                }
                loop {
                    items.push(self.expr()?);
                    if self.eat(&Tok::RBracket) {
                        return Ok(Expr::List(items));
                    }
                    self.expect(&Tok::Comma, "`,` or `]`")?;
                }
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    /// `@name` or `@name(args)` after the `@`/`@@` has been eaten.
    fn attribute(&mut self) -> Result<(String, Vec<Arg>), SchemaProblem> {
        let name = self.ident("an attribute name")?;
        let args = if self.peek() == Some(&Tok::LParen) {
            self.args()?
        } else {
            Vec::new()
        };
        Ok((name, args))
    }
}

fn bad_args(attribute: &str, expected: &'static str) -> SchemaProblem {
    SchemaProblem::BadArguments {
        attribute: attribute.to_owned(),
        expected,
    }
}

/// The string argument of `@map`, `@@map`, `@@schema` (the first; `name:` may follow).
fn string_arg(attribute: &str, args: &[Arg]) -> Result<String, SchemaProblem> {
    match args.first() {
        Some(Arg {
            value: Expr::Str(s),
            ..
        }) => Ok(s.clone()),
        _ => Err(bad_args(attribute, "one string")),
    }
}

/// The field list of `@@id([a, b])` / `@@unique([a, b], name: "...")`.
fn field_list(attribute: &str, args: &[Arg]) -> Result<Vec<String>, SchemaProblem> {
    let list = args
        .iter()
        .find(|a| a.name.is_none() || a.name.as_deref() == Some("fields"))
        .map(|a| &a.value);
    match list {
        Some(list) => names(attribute, list),
        None => Err(bad_args(attribute, "a list of fields")),
    }
}

/// `[a, b]` as names.
fn names(attribute: &str, list: &Expr) -> Result<Vec<String>, SchemaProblem> {
    let Expr::List(items) = list else {
        return Err(bad_args(attribute, "a list of fields"));
    };
    items
        .iter()
        .map(|item| match item {
            Expr::Ident(name) => Ok(name.clone()),
            // `@@unique([email(sort: Desc)])` and the like: the field is the call's name.
            Expr::Call(name, _) => Ok(name.clone()),
            _ => Err(bad_args(attribute, "a list of fields")),
        })
        .collect()
}

fn default_value(expr: &Expr) -> Result<DefaultValue, SchemaProblem> {
    let version = |args: &[Arg], allowed: &[u8], fallback: u8| -> Result<u8, SchemaProblem> {
        match args {
            [] => Ok(fallback),
            [Arg {
                value: Expr::Num(n),
                ..
            }] => n
                .parse::<u8>()
                .ok()
                .filter(|v| allowed.contains(v))
                .ok_or_else(|| bad_args("@default", "a version Prisma supports")),
            _ => Err(bad_args("@default", "a version Prisma supports")),
        }
    };
    Ok(match expr {
        Expr::Str(s) => DefaultValue::String(s.clone()),
        Expr::Num(n) => DefaultValue::Number(n.clone()),
        Expr::Ident(name) if name == "true" => DefaultValue::Boolean(true),
        Expr::Ident(name) if name == "false" => DefaultValue::Boolean(false),
        Expr::Ident(name) => DefaultValue::EnumValue(name.clone()),
        Expr::List(items) => {
            DefaultValue::List(items.iter().map(default_value).collect::<Result<_, _>>()?)
        }
        Expr::Call(name, args) => match name.as_str() {
            "cuid" => DefaultValue::Cuid(version(args, &[1, 2], 1)?),
            "uuid" => DefaultValue::Uuid(version(args, &[4, 7], 4)?),
            "nanoid" => match args.as_slice() {
                [] => DefaultValue::Nanoid(None),
                [Arg {
                    value: Expr::Num(n),
                    ..
                }] => DefaultValue::Nanoid(Some(
                    n.parse::<usize>()
                        .ok()
                        .filter(|&n| (2..=255).contains(&n))
                        .ok_or_else(|| bad_args("@default", "a nanoid length from 2 to 255"))?,
                )),
                _ => return Err(bad_args("@default", "a nanoid length from 2 to 255")),
            },
            "ulid" => DefaultValue::Ulid,
            "autoincrement" => DefaultValue::Autoincrement,
            "sequence" => DefaultValue::Sequence,
            "now" => DefaultValue::Now,
            "auto" => DefaultValue::Auto,
            "dbgenerated" => match args.as_slice() {
                [] => DefaultValue::DbGenerated(None),
                [Arg {
                    value: Expr::Str(sql),
                    ..
                }] => DefaultValue::DbGenerated(Some(sql.clone())),
                _ => return Err(bad_args("@default", "dbgenerated(\"SQL\")")),
            },
            other => return Err(SchemaProblem::UnknownDefault(other.to_owned())),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Blocks

enum Block {
    None,
    Model(Model),
    Enum(Enum),
    Datasource,
    Skipped(String),
}

#[derive(Default)]
struct Parser {
    schema: Schema,
}

impl Parser {
    fn run(mut self, text: &str) -> Result<Schema, SchemaError> {
        let mut block = Block::None;
        let mut block_line = 0;
        let mut pending: Vec<Tok> = Vec::new();
        let mut pending_line = 0;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let toks = tokenize(raw).map_err(|problem| SchemaError { line, problem })?;
            if toks.is_empty() {
                continue;
            }
            if pending.is_empty() {
                pending_line = line;
            }
            pending.extend(toks);
            // An argument list may run over several lines: wait for it to close.
            if depth(&pending) > 0 {
                continue;
            }
            let toks = Tokens {
                toks: std::mem::take(&mut pending),
                pos: 0,
            };
            let at = pending_line;
            let err = |problem| SchemaError { line: at, problem };
            block = match block {
                Block::None => {
                    block_line = at;
                    self.open(toks, at).map_err(err)?
                }
                Block::Model(mut model) if toks.peek() != Some(&Tok::RBrace) => {
                    self.model_line(&mut model, toks, at).map_err(err)?;
                    Block::Model(model)
                }
                Block::Enum(mut e) if toks.peek() != Some(&Tok::RBrace) => {
                    enum_line(&mut e, toks).map_err(err)?;
                    Block::Enum(e)
                }
                Block::Datasource if toks.peek() != Some(&Tok::RBrace) => {
                    self.datasource_line(toks).map_err(err)?;
                    Block::Datasource
                }
                Block::Skipped(name) if toks.peek() != Some(&Tok::RBrace) => Block::Skipped(name),
                open => {
                    let mut toks = toks;
                    toks.next();
                    toks.end().map_err(err)?;
                    self.close(open).map_err(err)?;
                    Block::None
                }
            };
        }
        if !pending.is_empty() {
            return Err(SchemaError {
                line: pending_line,
                problem: SchemaProblem::Unexpected {
                    expected: "a closing `)` or `]`",
                    found: "the end of the file".to_owned(),
                },
            });
        }
        let unclosed = match block {
            Block::None => None,
            Block::Model(m) => Some(m.name),
            Block::Enum(e) => Some(e.name),
            Block::Datasource => Some("datasource".to_owned()),
            Block::Skipped(name) => Some(name),
        };
        if let Some(name) = unclosed {
            return Err(SchemaError {
                line: block_line,
                problem: SchemaProblem::Unclosed(name),
            });
        }
        Ok(self.schema)
    }

    fn open(&self, mut toks: Tokens, line: usize) -> Result<Block, SchemaProblem> {
        if toks.peek() == Some(&Tok::RBrace) {
            return Err(SchemaProblem::StrayBrace);
        }
        let keyword = toks.ident("`model`, `enum`, `datasource` or `generator`")?;
        let name = toks.ident("a block name")?;
        toks.expect(&Tok::LBrace, "`{`")?;
        toks.end()?;
        let taken = self.schema.models.iter().any(|m| m.name == name)
            || self.schema.enums.iter().any(|e| e.name == name);
        if taken && matches!(keyword.as_str(), "model" | "enum") {
            return Err(SchemaProblem::Duplicate(name));
        }
        Ok(match keyword.as_str() {
            "model" => Block::Model(Model {
                name,
                line,
                fields: Vec::new(),
                map: None,
                schema: None,
                compound_id: None,
                compound_unique: Vec::new(),
            }),
            "enum" => Block::Enum(Enum {
                name,
                line,
                values: Vec::new(),
                map: None,
                schema: None,
            }),
            "datasource" => Block::Datasource,
            "generator" | "view" | "type" => Block::Skipped(name),
            other => return Err(SchemaProblem::UnknownBlock(other.to_owned())),
        })
    }

    fn close(&mut self, block: Block) -> Result<(), SchemaProblem> {
        match block {
            Block::None => return Err(SchemaProblem::StrayBrace),
            Block::Model(model) => self.schema.models.push(model),
            Block::Enum(e) => self.schema.enums.push(e),
            Block::Datasource | Block::Skipped(_) => {}
        }
        Ok(())
    }

    fn datasource_line(&mut self, mut toks: Tokens) -> Result<(), SchemaProblem> {
        let key = toks.ident("a datasource setting")?;
        toks.expect(&Tok::Equals, "`=`")?;
        let value = toks.expr()?;
        toks.end()?;
        if key == "provider" {
            match value {
                Expr::Str(provider) => self.schema.provider = Some(provider),
                _ => return Err(bad_args("provider", "a string")),
            }
        }
        Ok(())
    }

    fn model_line(
        &self,
        model: &mut Model,
        mut toks: Tokens,
        line: usize,
    ) -> Result<(), SchemaProblem> {
        if toks.eat(&Tok::AtAt) {
            let (name, args) = toks.attribute()?;
            toks.end()?;
            match name.as_str() {
                "map" => model.map = Some(string_arg("@@map", &args)?),
                "schema" => model.schema = Some(string_arg("@@schema", &args)?),
                "id" => model.compound_id = Some(field_list("@@id", &args)?),
                "unique" => model.compound_unique.push(field_list("@@unique", &args)?),
                _ => {}
            }
            return Ok(());
        }
        let name = toks.ident("a field name or `@@`")?;
        if model.field(&name).is_some() {
            return Err(SchemaProblem::Duplicate(name));
        }
        let type_name = toks.ident("a field type")?;
        let ty = if type_name == "Unsupported" {
            match toks.args()?.as_slice() {
                [Arg {
                    value: Expr::Str(db),
                    ..
                }] => FieldType::Unsupported(db.clone()),
                _ => return Err(bad_args("Unsupported", "one string")),
            }
        } else {
            FieldType::from_name(&type_name)
        };
        let arity = if toks.eat(&Tok::Question) {
            Arity::Optional
        } else if toks.eat(&Tok::LBracket) {
            toks.expect(&Tok::RBracket, "`]`")?;
            Arity::List
        } else {
            Arity::Required
        };
        let mut field = Field {
            name,
            line,
            ty,
            arity,
            id: false,
            unique: false,
            updated_at: false,
            default: None,
            map: None,
            native: None,
            relation: None,
            other_attributes: Vec::new(),
        };
        while toks.peek().is_some() {
            toks.expect(&Tok::At, "`@` and an attribute")?;
            let (attr, args) = toks.attribute()?;
            match attr.as_str() {
                "id" => field.id = true,
                "unique" => field.unique = true,
                "updatedAt" => field.updated_at = true,
                "map" => field.map = Some(string_arg("@map", &args)?),
                "default" => {
                    let value = args
                        .iter()
                        .find(|a| a.name.is_none() || a.name.as_deref() == Some("value"))
                        .ok_or_else(|| bad_args("@default", "a value"))?;
                    field.default = Some(default_value(&value.value)?);
                }
                "relation" => {
                    let list = |key: &str| -> Result<Vec<String>, SchemaProblem> {
                        match args.iter().find(|a| a.name.as_deref() == Some(key)) {
                            None => Ok(Vec::new()),
                            Some(arg) => names("@relation", &arg.value),
                        }
                    };
                    field.relation = Some(Relation {
                        fields: list("fields")?,
                        references: list("references")?,
                    });
                }
                native if native.starts_with("db.") => {
                    let args = args
                        .iter()
                        .map(|a| match &a.value {
                            Expr::Num(n) | Expr::Ident(n) | Expr::Str(n) => Ok(n.clone()),
                            _ => Err(bad_args("@db", "numbers or names")),
                        })
                        .collect::<Result<_, _>>()?;
                    field.native = Some(NativeType {
                        name: native["db.".len()..].to_owned(),
                        args,
                    });
                }
                other => field.other_attributes.push(format!("@{other}")),
            }
        }
        model.fields.push(field);
        Ok(())
    }
}

fn enum_line(e: &mut Enum, mut toks: Tokens) -> Result<(), SchemaProblem> {
    if toks.eat(&Tok::AtAt) {
        let (name, args) = toks.attribute()?;
        toks.end()?;
        match name.as_str() {
            "map" => e.map = Some(string_arg("@@map", &args)?),
            "schema" => e.schema = Some(string_arg("@@schema", &args)?),
            _ => {}
        }
        return Ok(());
    }
    let name = toks.ident("an enum value or `@@`")?;
    if e.values.iter().any(|v| v.name == name) {
        return Err(SchemaProblem::Duplicate(name));
    }
    let mut value = EnumValue { name, map: None };
    while toks.peek().is_some() {
        toks.expect(&Tok::At, "`@` and an attribute")?;
        let (attr, args) = toks.attribute()?;
        if attr == "map" {
            value.map = Some(string_arg("@map", &args)?);
        }
    }
    e.values.push(value);
    Ok(())
}

/// How many `(`/`[` are still open.
fn depth(toks: &[Tok]) -> i64 {
    toks.iter().fold(0, |d, t| match t {
        Tok::LParen | Tok::LBracket => d + 1,
        Tok::RParen | Tok::RBracket => d - 1,
        _ => d,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../fixtures/prisma/schema.prisma");
    const CUID: &str = include_str!("../../fixtures/prisma/cuid-clerkid.prisma");
    const AUTOINCREMENT: &str = include_str!("../../fixtures/prisma/autoincrement-mapped.prisma");
    const UUID: &str = include_str!("../../fixtures/prisma/uuid-soft-delete.prisma");

    fn field<'m>(model: &'m Model, name: &str) -> Result<&'m Field, String> {
        model
            .field(name)
            .ok_or_else(|| format!("no field {name} in {}", model.name))
    }

    fn user(schema: &Schema) -> Result<&Model, String> {
        schema
            .model("User")
            .ok_or_else(|| "no User model".to_owned())
    }

    fn error_of(text: &str) -> SchemaError {
        match Schema::parse(text) {
            Ok(schema) => panic!("parsed: {schema:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_seed_schema_parses_with_its_enum_and_relations() -> Result<(), Box<dyn std::error::Error>>
    {
        let schema = Schema::parse(SEED)?;
        assert_eq!(schema.provider.as_deref(), Some("postgresql"));
        let names: Vec<&str> = schema.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["User", "Favorite", "Bookmark"]);
        let user = user(&schema)?;
        assert_eq!(user.line, 15);
        assert_eq!(user.table_name(), "User");

        let id = field(user, "id")?;
        assert!(id.id && id.unique && id.default.is_none());
        assert_eq!(
            (id.ty.clone(), id.arity),
            (FieldType::String, Arity::Required)
        );

        let name = field(user, "name")?;
        assert_eq!(name.arity, Arity::Optional);
        assert_eq!(
            name.native,
            Some(NativeType {
                name: "VarChar".to_owned(),
                args: vec!["255".to_owned()]
            })
        );
        assert!(field(user, "mail_address")?.unique);

        let role = field(user, "role")?;
        assert_eq!(role.ty, FieldType::Named("Role".to_owned()));
        assert_eq!(
            role.default,
            Some(DefaultValue::EnumValue("USER".to_owned()))
        );

        let created = field(user, "createdAt")?;
        assert_eq!(created.default, Some(DefaultValue::Now));
        assert_eq!(
            created.native.as_ref().map(|n| n.args.clone()),
            Some(vec!["0".to_owned()])
        );
        assert!(field(user, "updatedAt")?.updated_at);
        assert_eq!(field(user, "Favorite")?.arity, Arity::List);

        let role_enum = schema.enum_named("Role").ok_or("no Role enum")?;
        let values: Vec<&str> = role_enum.values.iter().map(|v| v.db_label()).collect();
        assert_eq!(values, ["ADMIN", "USER"]);

        let favorite = schema.model("Favorite").ok_or("no Favorite")?;
        assert_eq!(
            field(favorite, "id")?.default,
            Some(DefaultValue::Autoincrement)
        );
        assert_eq!(
            field(favorite, "user")?.relation,
            Some(Relation {
                fields: vec!["userId".to_owned()],
                references: vec!["id".to_owned()],
            })
        );
        Ok(())
    }

    #[test]
    fn the_cuid_shape_parses_its_generated_key_and_clerk_id(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let schema = Schema::parse(CUID)?;
        let user = user(&schema)?;
        let id = field(user, "id")?;
        assert!(id.id);
        assert_eq!(id.default, Some(DefaultValue::Cuid(1)));
        assert!(field(user, "clerkId")?.unique);
        assert!(field(user, "email")?.unique);
        assert_eq!(field(user, "imageUrl")?.arity, Arity::Optional);
        assert_eq!(
            field(user, "posts")?.ty,
            FieldType::Named("Post".to_owned())
        );
        let post = schema.model("Post").ok_or("no Post")?;
        assert_eq!(
            field(post, "author")?
                .relation
                .as_ref()
                .map(|r| r.fields.clone()),
            Some(vec!["authorId".to_owned()])
        );
        Ok(())
    }

    #[test]
    fn the_autoincrement_shape_parses_its_maps() -> Result<(), Box<dyn std::error::Error>> {
        let schema = Schema::parse(AUTOINCREMENT)?;
        let user = user(&schema)?;
        assert_eq!(user.map.as_deref(), Some("users"));
        assert_eq!(user.table_name(), "users");
        assert_eq!(field(user, "id")?.ty, FieldType::Int);
        assert_eq!(
            field(user, "id")?.default,
            Some(DefaultValue::Autoincrement)
        );
        assert_eq!(field(user, "clerkUserId")?.column_name(), "clerk_user_id");
        let email = field(user, "emailAddress")?;
        assert_eq!((email.arity, email.unique), (Arity::Optional, true));
        assert_eq!(email.column_name(), "email_address");
        assert_eq!(field(user, "avatarUrl")?.column_name(), "avatar_url");
        assert_eq!(
            field(user, "plan")?.default,
            Some(DefaultValue::String("free".to_owned()))
        );
        assert_eq!(field(user, "createdAt")?.column_name(), "created_at");
        assert_eq!(field(user, "updatedAt")?.column_name(), "updated_at");
        Ok(())
    }

    #[test]
    fn the_uuid_shape_parses_its_native_uuid_and_soft_delete(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let schema = Schema::parse(UUID)?;
        let user = user(&schema)?;
        let id = field(user, "id")?;
        assert_eq!(id.default, Some(DefaultValue::Uuid(4)));
        assert_eq!(id.native.as_ref().map(|n| n.name.as_str()), Some("Uuid"));
        assert!(!field(user, "email")?.unique);
        assert_eq!(field(user, "firstName")?.arity, Arity::Required);
        assert_eq!(
            field(user, "deleted")?.default,
            Some(DefaultValue::Boolean(false))
        );
        assert_eq!(field(user, "deletedAt")?.arity, Arity::Optional);
        let role = schema.enum_named("Role").ok_or("no Role")?;
        assert_eq!(role.line, 8);
        let values: Vec<&str> = role.values.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(values, ["MEMBER", "ADMIN", "OWNER"]);
        Ok(())
    }

    #[test]
    fn every_default_function_is_read() -> Result<(), SchemaError> {
        let schema = Schema::parse(
            r#"
            model M {
              a String @id @default(cuid(2))
              b String @default(uuid(7))
              c String @default(nanoid(16))
              d String @default(nanoid())
              e String @default(dbgenerated("gen_random_uuid()")) @db.Uuid
              f Int    @default(-1)
              g Float  @default(1.5)
              h Boolean @default(true)
              i String[] @default([])
              j String @default("a \"quoted\" // not a comment") // a comment
              k String @default(uuid())
              l String @default(cuid())
            }
            "#,
        )?;
        let defaults: Vec<Option<DefaultValue>> = schema.models[0]
            .fields
            .iter()
            .map(|f| f.default.clone())
            .collect();
        assert_eq!(
            defaults,
            [
                Some(DefaultValue::Cuid(2)),
                Some(DefaultValue::Uuid(7)),
                Some(DefaultValue::Nanoid(Some(16))),
                Some(DefaultValue::Nanoid(None)),
                Some(DefaultValue::DbGenerated(Some(
                    "gen_random_uuid()".to_owned()
                ))),
                Some(DefaultValue::Number("-1".to_owned())),
                Some(DefaultValue::Number("1.5".to_owned())),
                Some(DefaultValue::Boolean(true)),
                Some(DefaultValue::List(Vec::new())),
                Some(DefaultValue::String(
                    "a \"quoted\" // not a comment".to_owned()
                )),
                Some(DefaultValue::Uuid(4)),
                Some(DefaultValue::Cuid(1)),
            ]
        );
        Ok(())
    }

    #[test]
    fn enum_maps_block_attributes_and_comments_are_read() -> Result<(), SchemaError> {
        let schema = Schema::parse(
            r#"
            /// The plan.
            enum Plan {
              FREE @map("free") // the default
              PRO  @map("pro")

              @@map("plan_kind")
            }

            model Account {
              /// The key.
              id    Int    @id @default(autoincrement())
              email String
              org   String
              data  Unsupported("tsvector")?

              @@unique([email, org])
              @@index([email])
              @@map("accounts")
              @@schema("auth")
            }
            "#,
        )?;
        let plan = &schema.enums[0];
        assert_eq!(plan.db_name(), "plan_kind");
        let labels: Vec<&str> = plan.values.iter().map(EnumValue::db_label).collect();
        assert_eq!(labels, ["free", "pro"]);
        let account = &schema.models[0];
        assert_eq!(account.table_name(), "accounts");
        assert_eq!(account.schema.as_deref(), Some("auth"));
        assert_eq!(
            account.compound_unique,
            [vec!["email".to_owned(), "org".to_owned()]]
        );
        assert_eq!(account.fields.len(), 4);
        assert_eq!(
            account.fields[3].ty,
            FieldType::Unsupported("tsvector".to_owned())
        );
        Ok(())
    }

    #[test]
    fn an_attribute_may_run_over_several_lines() -> Result<(), SchemaError> {
        let schema = Schema::parse(
            "model M {\n  id Int @id\n  @@unique([\n    id\n  ])\n  name String\n}\n",
        )?;
        let model = &schema.models[0];
        assert_eq!(model.compound_unique, [vec!["id".to_owned()]]);
        assert_eq!(model.fields[1].line, 6);
        Ok(())
    }

    #[test]
    fn an_unclosed_string_names_its_line() {
        let err = error_of("model M {\n  id String @id\n  x String @default(\"oops)\n}\n");
        assert_eq!(err.line, 3);
        assert_eq!(err.problem, SchemaProblem::UnterminatedString);
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn an_unclosed_block_names_the_line_it_opened_on() {
        let err = error_of("\n\nmodel User {\n  id String @id\n");
        assert_eq!(err.line, 3);
        assert_eq!(err.problem, SchemaProblem::Unclosed("User".to_owned()));
    }

    #[test]
    fn a_field_without_a_type_names_its_line() {
        let err = error_of("model M {\n  id String @id\n  name\n}\n");
        assert_eq!(err.line, 3);
        assert!(matches!(
            err.problem,
            SchemaProblem::Unexpected {
                expected: "a field type",
                ..
            }
        ));
    }

    #[test]
    fn an_unknown_default_function_names_its_line() {
        let err = error_of("model M {\n  id String @id @default(snowflake())\n}\n");
        assert_eq!(err.line, 2);
        assert_eq!(
            err.problem,
            SchemaProblem::UnknownDefault("snowflake".to_owned())
        );
    }

    #[test]
    fn a_bad_uuid_version_names_its_line() {
        let err = error_of("model M {\n\n  id String @id @default(uuid(5))\n}\n");
        assert_eq!(err.line, 3);
    }

    #[test]
    fn duplicates_stray_braces_and_unknown_blocks_name_their_line() {
        assert_eq!(
            error_of("model M {\n  a Int @id\n  a Int\n}\n"),
            SchemaError {
                line: 3,
                problem: SchemaProblem::Duplicate("a".to_owned())
            }
        );
        assert_eq!(error_of("}\n").problem, SchemaProblem::StrayBrace);
        assert_eq!(
            error_of("\ntable T {\n}\n"),
            SchemaError {
                line: 2,
                problem: SchemaProblem::UnknownBlock("table".to_owned())
            }
        );
        assert_eq!(error_of("model M {\n  a Int # x\n}\n").line, 2);
    }

    #[test]
    fn an_unclosed_argument_list_names_the_line_it_opened_on() {
        let err = error_of("model M {\n  id Int @id\n  @@unique([id\n}\n");
        assert_eq!(err.line, 3);
    }
}
