//! Any application table as the catalog describes it (see [`crate::domain::table`]): columns
//! with their types, nullability and what the database fills, the primary key, and the columns
//! unique on their own. Catalog reads only; never a row of the table.

use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel::QueryableByName;

use crate::domain::table::{Catalog, LiveColumn, LiveEnum, LiveTable};

use super::postgres::Pg;
use super::sqlite::Lite;
use super::DbError;

#[derive(QueryableByName)]
struct PgRelation {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = BigInt)]
    oid: i64,
}

#[derive(QueryableByName)]
struct PgColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Nullable<Integer>)]
    max_length: Option<i32>,
    #[diesel(sql_type = Nullable<Integer>)]
    time_precision: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    enum_name: Option<String>,
    #[diesel(sql_type = BigInt)]
    type_oid: i64,
    #[diesel(sql_type = Bool)]
    nullable: bool,
    #[diesel(sql_type = Nullable<Text>)]
    default_expr: Option<String>,
    #[diesel(sql_type = Bool)]
    is_identity: bool,
    #[diesel(sql_type = Nullable<Text>)]
    generated: Option<String>,
}

#[derive(QueryableByName)]
struct PgLabel {
    #[diesel(sql_type = BigInt)]
    type_oid: i64,
    #[diesel(sql_type = Text)]
    label: String,
}

#[derive(QueryableByName)]
struct PgIndexColumn {
    #[diesel(sql_type = BigInt)]
    index_oid: i64,
    #[diesel(sql_type = Bool)]
    is_primary: bool,
    #[diesel(sql_type = Bool)]
    plain: bool,
    #[diesel(sql_type = Nullable<Text>)]
    column_name: Option<String>,
}

/// One index: whether it is the primary key, whether it is on plain columns for every row (no
/// predicate, no expression), and its key columns (`None` for an expression).
type IndexColumns = (bool, bool, Vec<Option<String>>);

/// Groups index rows (ordered by index, then key position) into indexes.
fn group_indexes<I: IntoIterator<Item = (i64, bool, bool, Option<String>)>>(
    rows: I,
) -> Vec<IndexColumns> {
    let mut indexes: Vec<(i64, IndexColumns)> = Vec::new();
    for (id, primary, plain, column) in rows {
        match indexes.last_mut() {
            Some((last, (_, _, columns))) if *last == id => columns.push(column),
            _ => indexes.push((id, (primary, plain, vec![column]))),
        }
    }
    indexes.into_iter().map(|(_, index)| index).collect()
}

/// The primary key's columns and the columns unique on their own, from the unique indexes.
fn keys(indexes: &[IndexColumns]) -> (Vec<String>, Vec<String>) {
    let mut primary_key = Vec::new();
    let mut unique = Vec::new();
    for (primary, plain, columns) in indexes {
        if *primary {
            primary_key = columns.iter().flatten().cloned().collect();
        }
        if let ([Some(only)], true) = (columns.as_slice(), *plain) {
            if !unique.contains(only) {
                unique.push(only.clone());
            }
        }
    }
    (primary_key, unique)
}

impl Pg {
    /// The table `name` in `schema` (else the connection's current schema), or `None` when
    /// there is no such table.
    pub(super) async fn describe_table(
        &self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Option<LiveTable>, DbError> {
        let (schema, name) = (schema.map(str::to_owned), name.to_owned());
        self.with_conn(async move |conn| {
            use diesel_async::RunQueryDsl;
            let relation: Option<PgRelation> = diesel::sql_query(
                "SELECT n.nspname::text AS schema_name, c.oid::int8 AS oid
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relname = $2 AND n.nspname = coalesce($1, current_schema())
                    AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            )
            .bind::<Nullable<Text>, _>(schema)
            .bind::<Text, _>(name.clone())
            .get_results(conn)
            .await?
            .into_iter()
            .next();
            let Some(relation) = relation else {
                return Ok(None);
            };
            let columns: Vec<PgColumn> = diesel::sql_query(
                "SELECT a.attname::text AS name,
                        format_type(a.atttypid, NULL) AS data_type,
                        CASE WHEN t.typname IN ('varchar', 'bpchar') AND a.atttypmod > 4
                             THEN a.atttypmod - 4 END AS max_length,
                        CASE WHEN t.typname IN ('timestamp', 'timestamptz', 'time', 'timetz')
                             THEN CASE WHEN a.atttypmod < 0 THEN 6 ELSE a.atttypmod END END
                             AS time_precision,
                        CASE WHEN t.typtype = 'e' THEN t.typname::text END AS enum_name,
                        a.atttypid::int8 AS type_oid,
                        NOT a.attnotnull AS nullable,
                        CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END
                             AS default_expr,
                        a.attidentity <> '' AS is_identity,
                        CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END
                             AS generated
                   FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
            )
            .bind::<BigInt, _>(relation.oid)
            .load(conn)
            .await?;
            let labels: Vec<PgLabel> = diesel::sql_query(
                "SELECT e.enumtypid::int8 AS type_oid, e.enumlabel::text AS label
                   FROM pg_enum e
                  WHERE e.enumtypid IN (SELECT a.atttypid FROM pg_attribute a
                                         WHERE a.attrelid = $1::oid AND a.attnum > 0)
                  ORDER BY e.enumtypid, e.enumsortorder",
            )
            .bind::<BigInt, _>(relation.oid)
            .load(conn)
            .await?;
            let index_rows: Vec<PgIndexColumn> = diesel::sql_query(
                "SELECT i.indexrelid::int8 AS index_oid, i.indisprimary AS is_primary,
                        (i.indpred IS NULL AND i.indexprs IS NULL) AS plain,
                        a.attname::text AS column_name
                   FROM pg_index i
                  CROSS JOIN LATERAL generate_series(0, i.indnkeyatts - 1) AS k(n)
                   LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.n]
                  WHERE i.indrelid = $1::oid AND i.indisunique
                  ORDER BY i.indexrelid, k.n",
            )
            .bind::<BigInt, _>(relation.oid)
            .load(conn)
            .await?;
            let indexes = group_indexes(
                index_rows
                    .into_iter()
                    .map(|r| (r.index_oid, r.is_primary, r.plain, r.column_name)),
            );
            let (primary_key, unique) = keys(&indexes);
            let columns = columns
                .into_iter()
                .map(|c| LiveColumn {
                    enum_type: c.enum_name.map(|name| LiveEnum {
                        name,
                        labels: labels
                            .iter()
                            .filter(|l| l.type_oid == c.type_oid)
                            .map(|l| l.label.clone())
                            .collect(),
                    }),
                    name: c.name,
                    data_type: c.data_type,
                    max_length: c.max_length.and_then(|n| u32::try_from(n).ok()),
                    precision: c.time_precision.and_then(|n| u32::try_from(n).ok()),
                    nullable: c.nullable,
                    default: c.default_expr,
                    identity: c.is_identity,
                    generated: c.generated,
                })
                .collect();
            Ok(Some(LiveTable {
                catalog: Catalog::Postgres,
                schema: Some(relation.schema_name),
                name,
                columns,
                primary_key,
                unique,
            }))
        })
        .await
    }
}

#[derive(QueryableByName)]
struct LiteColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Bool)]
    is_notnull: bool,
    #[diesel(sql_type = Nullable<Text>)]
    dflt_value: Option<String>,
    #[diesel(sql_type = Integer)]
    pk: i32,
    #[diesel(sql_type = Integer)]
    hidden: i32,
}

#[derive(QueryableByName)]
struct LiteIndex {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    origin: String,
    #[diesel(sql_type = Bool)]
    partial: bool,
}

#[derive(QueryableByName)]
struct LiteIndexColumn {
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
}

/// `VARCHAR(255)` → 255.
fn declared_length(declared: &str) -> Option<u32> {
    let open = declared.find('(')?;
    let close = declared[open..].find(')')? + open;
    declared[open + 1..close].trim().parse().ok()
}

impl Lite {
    /// The table `name` of the main database, or `None` when there is no such table.
    pub(super) async fn describe_table(&self, name: &str) -> Result<Option<LiveTable>, DbError> {
        let name = name.to_owned();
        self.run(move |conn| {
            use diesel::RunQueryDsl;
            let rows: Vec<LiteColumn> = diesel::sql_query(
                "SELECT name, type AS data_type, \"notnull\" AS is_notnull, dflt_value, pk, hidden
                   FROM pragma_table_xinfo(?)",
            )
            .bind::<Text, _>(&name)
            .load(conn)?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut key: Vec<(i32, String)> = rows
                .iter()
                .filter(|c| c.pk > 0)
                .map(|c| (c.pk, c.name.clone()))
                .collect();
            key.sort();
            let primary_key: Vec<String> = key.into_iter().map(|(_, n)| n).collect();
            let indexes: Vec<LiteIndex> = diesel::sql_query(
                "SELECT name, origin, partial FROM pragma_index_list(?) WHERE \"unique\"",
            )
            .bind::<Text, _>(&name)
            .load(conn)?;
            let mut unique = Vec::new();
            for index in indexes.iter().filter(|i| !i.partial) {
                let columns: Vec<LiteIndexColumn> =
                    diesel::sql_query("SELECT name FROM pragma_index_info(?)")
                        .bind::<Text, _>(&index.name)
                        .load(conn)?;
                if let [LiteIndexColumn { name: Some(only) }] = columns.as_slice() {
                    if !unique.contains(only) && (index.origin != "pk" || primary_key.len() == 1) {
                        unique.push(only.clone());
                    }
                }
            }
            // The rowid: an `INTEGER PRIMARY KEY` column is filled by SQLite.
            let rowid = match primary_key.as_slice() {
                [only] => rows
                    .iter()
                    .find(|c| &c.name == only)
                    .filter(|c| c.data_type.eq_ignore_ascii_case("INTEGER"))
                    .map(|c| c.name.clone()),
                _ => None,
            };
            let columns = rows
                .into_iter()
                .filter(|c| c.hidden != 1)
                .map(|c| LiveColumn {
                    max_length: declared_length(&c.data_type),
                    identity: rowid.as_deref() == Some(c.name.as_str()),
                    // SQLite does not say a generated column's expression through its pragmas.
                    generated: matches!(c.hidden, 2 | 3).then(|| "generated".to_owned()),
                    nullable: !c.is_notnull && rowid.as_deref() != Some(c.name.as_str()),
                    name: c.name,
                    data_type: c.data_type,
                    precision: None,
                    enum_type: None,
                    default: c.dflt_value,
                })
                .collect();
            Ok(Some(LiveTable {
                catalog: Catalog::Sqlite,
                schema: None,
                name,
                columns,
                primary_key,
                unique,
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_column_plain_unique_indexes_make_a_column_unique_on_its_own() {
        let indexes = group_indexes([
            (1, true, true, Some("id".to_owned())),
            (2, false, true, Some("email".to_owned())),
            (3, false, true, Some("a".to_owned())),
            (3, false, true, Some("b".to_owned())),
            (4, false, false, Some("partial".to_owned())),
            (5, false, false, None),
        ]);
        let (primary_key, unique) = keys(&indexes);
        assert_eq!(primary_key, ["id"]);
        assert_eq!(unique, ["id", "email"]);
    }

    #[test]
    fn a_declared_length_is_read_from_the_type() {
        assert_eq!(declared_length("VARCHAR(255)"), Some(255));
        assert_eq!(declared_length("TEXT"), None);
    }
}
