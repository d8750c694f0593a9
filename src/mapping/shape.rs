//! The mapping as the writer in `db` needs it: the table, each column and how a value binds
//! into it ([`WriteShape`]), and which columns the rules read back.

use super::{ColumnKind, Fill, Mapping, Source, UserField};
use crate::domain::table::{quoted, Bind, WriteColumn, WriteShape};

impl Mapping {
    /// The table as the writer writes it. Column indexes are [`Mapping::columns`]'.
    pub fn write_shape(&self) -> WriteShape {
        let columns = self
            .columns
            .iter()
            .map(|c| WriteColumn {
                name: c.name.clone(),
                field: c.field.clone(),
                bind: self.bind(&c.kind),
            })
            .collect();
        let index = |keep: &dyn Fn(&super::Column) -> bool| self.columns.iter().position(keep);
        let clerk_id = index(&|c| c.name == self.clerk_id).unwrap_or_default();
        let unique_address = self.address_column().filter(|a| a.unique).map(|a| a.column);
        let filled_from = |field: UserField| {
            index(&|c| {
                matches!(c.kind, ColumnKind::DateTime { .. })
                    && matches!(
                        c.fill,
                        Fill::Source {
                            source: Source::User(f),
                            ..
                        } if f == field
                    )
            })
        };
        let updated_at = filled_from(UserField::UpdatedAt);
        let created_at = filled_from(UserField::CreatedAt);
        WriteShape {
            schema: self.table.schema.clone(),
            name: self.table.name.clone(),
            columns,
            clerk_id,
            unique_address,
            updated_at,
            created_at,
        }
    }

    /// The column the role rule writes, if any.
    pub fn role_column(&self) -> Option<usize> {
        self.columns.iter().position(|c| {
            matches!(
                c.fill,
                Fill::Source {
                    source: Source::Role,
                    ..
                }
            )
        })
    }

    fn bind(&self, kind: &ColumnKind) -> Bind {
        match kind {
            ColumnKind::Text => Bind::Text,
            ColumnKind::Uuid => Bind::Uuid,
            ColumnKind::Int => Bind::Int,
            ColumnKind::BigInt => Bind::BigInt,
            ColumnKind::Float => Bind::Float,
            ColumnKind::Decimal => Bind::Decimal,
            ColumnKind::Bool => Bind::Bool,
            ColumnKind::DateTime {
                with_time_zone: false,
                ..
            } => Bind::Timestamp,
            ColumnKind::DateTime {
                with_time_zone: true,
                ..
            } => Bind::TimestampTz,
            ColumnKind::Date => Bind::Date,
            ColumnKind::Enum { db_type, .. } => Bind::Enum(match &self.table.schema {
                Some(schema) => format!("{}.{}", quoted(schema), quoted(db_type)),
                None => quoted(db_type),
            }),
            ColumnKind::Json => Bind::Json,
            ColumnKind::Bytes | ColumnKind::List(_) | ColumnKind::Unsupported(_) => {
                Bind::Unsupported
            }
        }
    }
}
