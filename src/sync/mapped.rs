//! A mapped table (any application's user model, see [`crate::mapping`]): the same rules and
//! the same planner; what a planned row write puts into each column is the mapping's.
//!
//! Three things differ from the seed's `User` table, each decided here:
//! - **The address rule follows the column.** The newest claim on an address applies only to a
//!   unique address column; a non-unique one (or none) just follows its user
//!   ([`Addresses::Follow`]). On an optional unique column a row without an address of its own
//!   (no email, displaced) holds NULL instead of a placeholder.
//! - **The role rule's "named"** is whether the role column takes the version's
//!   `public_metadata.role` (an enum label the application declared, matched as the mapping
//!   says). The planner sees it as [`UserChange::role`] being some; a role an earlier webhook
//!   set and no version names any more goes back to the column's default.
//! - **A delete** deletes the row, or, with a soft delete, sets its flag and time instead.
//! - **The digest tie-break** covers what the mapping writes: two versions with the same
//!   `updated_at` that differ only in a mapped column (an image, a metadata path) are ordered
//!   by it too, so the row never depends on the order they arrive in.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use sha2::{Digest, Sha256};

use super::plan;
use super::{Addresses, SyncOptions};
use crate::db::port::{MappedRow, MappedWrites, Snapshot, Writes};
use crate::db::DbError;
use crate::domain::{Event, MessageId, Role, UserChange, Value};
use crate::mapping::{AddressColumn, Delete, Mapping, Write};

/// The mapping in force, with what the rules need of it.
pub(super) struct Mapped {
    mapping: Mapping,
    address: Option<AddressColumn>,
    role: Option<usize>,
}

impl Mapped {
    pub(super) fn new(mapping: Mapping) -> Self {
        Self {
            address: mapping.address_column(),
            role: mapping.role_column(),
            mapping,
        }
    }

    /// The options on this table: the address rule as its column allows.
    pub(super) fn options(&self, options: SyncOptions) -> SyncOptions {
        SyncOptions {
            addresses: if self.address.is_some_and(|a| a.unique) {
                Addresses::Unique
            } else {
                Addresses::Follow
            },
            ..options
        }
    }

    /// The deliveries as the planner sees them on this table: a version names a role exactly
    /// when the role column takes it, and an address longer than the address column holds is
    /// no address (a cut address would be someone else's mailbox; see [`crate::mapping`]).
    pub(super) fn prepare(&self, batch: Arc<[(MessageId, Event)]>) -> Arc<[(MessageId, Event)]> {
        let named = |change: &UserChange| self.role.is_some() && self.mapping.names_role(change);
        let max = self
            .address
            .and_then(|a| self.mapping.columns[a.column].max_length);
        let fits = |change: &UserChange| {
            change
                .email
                .as_ref()
                .is_none_or(|e| max.is_none_or(|max| e.as_str().chars().count() <= max))
        };
        batch
            .iter()
            .map(|(id, event)| {
                let mut event = event.clone();
                if let Event::Upsert { change, .. } = &mut event {
                    // Which role is the mapping's to say; to the planner, only whether one is.
                    change.role = named(change).then_some(Role::Admin);
                    if !fits(change) {
                        change.email = None;
                    }
                    change.digest = self.digest(change);
                }
                (id.clone(), event)
            })
            .collect()
    }

    /// **The digest tie-break** on this table: the version's own digest and every value the
    /// mapping writes on update, in column order (nothing that depends on the time of the
    /// write). A version the mapping cannot write keeps its own digest (its write fails).
    fn digest(&self, change: &UserChange) -> String {
        let Ok(values) = self.mapping.update_values(change, plan::no_email) else {
            return change.digest.clone();
        };
        let mut hasher = Sha256::new();
        hasher.update(change.digest.as_bytes());
        for assignment in &values {
            hasher.update((assignment.column as u64).to_le_bytes());
            match &assignment.write {
                Write::Keep => hasher.update([0]),
                Write::Value(value) => {
                    hasher.update([1]);
                    hash_value(&mut hasher, value);
                }
            }
        }
        crate::domain::lower_hex(&hasher.finalize())
    }

    /// Fills in what each planned write puts into the table's columns, `now` being the time
    /// of the write, the plan made over `snapshot`.
    ///
    /// **An address no Clerk user owns**: a row the application made without a Clerk id holds
    /// it, and clerk-sync never takes it from that row, nor writes a second row beside it. A
    /// plan giving such an address to a user is refused, naming the user (never the address):
    /// once that row carries the user's Clerk id (it is then adopted) or another address,
    /// replaying the dead letter applies it.
    pub(super) fn fill(
        &self,
        writes: &mut Writes,
        batch: &[(MessageId, Event)],
        snapshot: &Snapshot,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let given = writes
            .rows
            .iter()
            .map(|row| (&row.id, &row.address))
            .chain(writes.moves.iter().map(|(user, address)| (user, address)));
        for (user, address) in given {
            if snapshot.foreign.contains(address) {
                return Err(DbError::Refused(format!(
                    "the email address of {user} is held by a row of {} without a Clerk id \
                     (clerk-sync never takes it from a row no Clerk user owns): set that \
                     row's \"{}\" to {user} to have it adopted, or give it another address, \
                     then replay the dead letter",
                    self.mapping.table, self.mapping.clerk_id,
                )));
            }
        }
        let mut changes: HashMap<(&str, i64, &str), &UserChange> =
            HashMap::with_capacity(batch.len());
        for (_, event) in batch {
            if let Event::Upsert { change, .. } = event {
                changes.insert(
                    (change.id.as_str(), change.version, change.digest.as_str()),
                    change,
                );
            }
        }
        let mut rows = Vec::with_capacity(writes.rows.len());
        for row in &writes.rows {
            let version = (
                row.id.as_str(),
                row.updated_at.timestamp_millis(),
                row.digest.as_str(),
            );
            let change = changes.get(&version).ok_or_else(|| {
                DbError::Internal("a planned row write without its version".into())
            })?;
            let refused = |e: crate::mapping::ValueError| DbError::Refused(e.to_string());
            let address = self
                .address
                .filter(|a| a.unique)
                .map(|a| (a.column, self.address_value(&row.address)));
            let mut out = MappedRow::default();
            // Only what the row's write uses: an insert's values, or an update's.
            let update = if row.exists {
                self.mapping
                    .update_values(change, plan::no_email)
                    .map_err(refused)?
            } else {
                let values = self
                    .mapping
                    .values(change, now, plan::no_email)
                    .map_err(refused)?;
                for assignment in values.insert_only.into_iter().chain(values.sourced) {
                    if let Write::Value(value) = assignment.write {
                        out.insert.push((assignment.column, value));
                    }
                }
                Vec::new()
            };
            for assignment in update {
                let value = match assignment.write {
                    Write::Value(value) => Some(value),
                    // **The role rule**: a role a webhook set, named no more, goes back to
                    // the column's default.
                    Write::Keep if Some(assignment.column) == self.role && row.role.is_some() => {
                        self.mapping.columns[assignment.column].default_value()
                    }
                    Write::Keep => None,
                };
                if let Some(value) = value {
                    out.update.push((assignment.column, value));
                }
            }
            if let Some((column, value)) = address {
                for list in [&mut out.insert, &mut out.update] {
                    if let Some(slot) = list.iter_mut().find(|(c, _)| *c == column) {
                        slot.1 = value.clone();
                    }
                }
            }
            rows.push(out);
        }
        let moves = writes
            .moves
            .iter()
            .map(|(_, address)| self.address_value(address))
            .collect();
        let soft_delete = match self.mapping.delete {
            Delete::Hard => Vec::new(),
            Delete::Soft { .. } => self
                .mapping
                .soft_delete_values(now)
                .map_err(|e| DbError::Refused(e.to_string()))?
                .into_iter()
                .filter_map(|a| match a.write {
                    Write::Value(value) => Some((a.column, value)),
                    Write::Keep => None,
                })
                .collect(),
        };
        writes.mapped = Some(Box::new(MappedWrites {
            rows,
            moves,
            soft_delete,
        }));
        Ok(())
    }

    /// What the address column holds for a planned address: NULL for a placeholder where the
    /// column allows it.
    fn address_value(&self, address: &str) -> Value {
        if plan::is_placeholder(address) && self.address.is_some_and(|a| a.nullable) {
            Value::Null
        } else {
            Value::Text(address.to_owned())
        }
    }
}

/// A value into the digest, tagged by kind and length-prefixed, so no two values hash alike.
fn hash_value(hasher: &mut Sha256, value: &Value) {
    let mut bytes = |tag: u8, body: &[u8]| {
        hasher.update([tag]);
        hasher.update((body.len() as u64).to_le_bytes());
        hasher.update(body);
    };
    match value {
        Value::Null => bytes(0, &[]),
        Value::Text(text) => bytes(1, text.as_bytes()),
        Value::Uuid(uuid) => bytes(2, uuid.as_bytes()),
        Value::Int(i) => bytes(3, &i.to_le_bytes()),
        Value::BigInt(i) => bytes(4, &i.to_le_bytes()),
        Value::Float(x) => bytes(5, &x.to_bits().to_le_bytes()),
        Value::Decimal(text) => bytes(6, text.as_bytes()),
        Value::Bool(b) => bytes(7, &[u8::from(*b)]),
        Value::Timestamp(at) => {
            let parts = [at.timestamp(), i64::from(at.timestamp_subsec_nanos())];
            bytes(
                8,
                &[parts[0].to_le_bytes(), parts[1].to_le_bytes()].concat(),
            );
        }
        Value::Date(day) => bytes(9, day.to_string().as_bytes()),
        Value::Enum(label) => bytes(10, label.as_bytes()),
        Value::Json(json) => bytes(11, json.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NARROW: &str = r#"
model User {
  id        String   @id @default(cuid())
  clerkId   String   @unique
  email     String   @unique @db.VarChar(24)
  role      Role     @default(MEMBER)
  updatedAt DateTime @updatedAt
}
enum Role {
  MEMBER
  OWNER
}
"#;

    fn event(email: &str, role: &str) -> (MessageId, Event) {
        let body = serde_json::json!({
            "type": "user.updated", "object": "event", "timestamp": 1,
            "data": {"object": "user", "id": "user_1", "created_at": 1, "updated_at": 2,
                     "email_addresses": [{"id": "idn_1", "email_address": email}],
                     "primary_email_address_id": "idn_1",
                     "public_metadata": {"role": role}}
        });
        let id = MessageId::parse("msg_1").expect("an id");
        (
            id,
            Event::parse(body.to_string().as_bytes()).expect("an event"),
        )
    }

    fn prepared(mapped: &Mapped, email: &str, role: &str) -> UserChange {
        let batch: Arc<[(MessageId, Event)]> = Arc::from(vec![event(email, role)]);
        match &mapped.prepare(batch)[0].1 {
            Event::Upsert { change, .. } => change.clone(),
            _ => panic!("not an upsert"),
        }
    }

    #[test]
    fn the_planner_sees_what_the_table_can_hold() {
        let mapped = Mapped::new(Mapping::from_text(NARROW, None).expect("a mapping"));

        let fits = prepared(&mapped, "ada@example.com", "owner");
        let too_long = prepared(&mapped, "ada.lovelace.byron@example.com", "superuser");

        assert_eq!(
            fits.email.as_ref().map(|e| e.as_str()),
            Some("ada@example.com")
        );
        assert!(fits.role.is_some(), "OWNER is a value of the enum");
        assert!(
            too_long.email.is_none(),
            "an address the column cannot hold is none"
        );
        assert!(too_long.role.is_none(), "a role the enum lacks names none");
    }
}
