//! Rows as JSON arrays: how a batch hands many rows to one statement.
//!
//! Each set-based statement takes one parameter per table, a JSON array of
//! objects whose keys are column names, and turns it into a derived table
//! with [`source`]: `jsonb_to_recordset` on PostgreSQL, `json_each` on
//! SQLite. Everything after the derived table is the same SQL on both
//! backends, and the statement text does not depend on the number of rows,
//! so each is prepared once per connection.
//!
//! Times travel as fixed-width RFC 3339 text (six fractional digits and
//! `Z`: what SQLite stores, and what PostgreSQL parses), bytes as hex.

use serde::Serializer;

use crate::store::Timestamp;

/// The SQL dialect of a batch statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// The type of a column in a JSON row.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// Text (or null).
    Text,
    /// A 32-bit integer.
    Int,
    /// A boolean.
    Bool,
    /// A [`Timestamp`], as fixed-width text.
    Time,
    /// Bytes, as hex.
    Hex,
}

/// `(select … ) as {alias}`: the rows of the JSON array bound as `$n`,
/// with properly typed columns named as in `columns`.
pub fn source(dialect: Dialect, n: usize, alias: &str, columns: &[(&str, Ty)]) -> String {
    match dialect {
        Dialect::Postgres => {
            let decls: Vec<String> = columns
                .iter()
                .map(|(name, ty)| {
                    let sql = match ty {
                        Ty::Text | Ty::Hex => "text",
                        Ty::Int => "integer",
                        Ty::Bool => "boolean",
                        Ty::Time => "timestamptz",
                    };
                    format!("{name} {sql}")
                })
                .collect();
            let exprs: Vec<String> = columns
                .iter()
                .map(|(name, ty)| match ty {
                    Ty::Hex => format!("decode(r.{name}, 'hex') as {name}"),
                    _ => format!("r.{name}"),
                })
                .collect();
            format!(
                "(select {} from jsonb_to_recordset(${n}::jsonb) as r({})) as {alias}",
                exprs.join(", "),
                decls.join(", ")
            )
        }
        Dialect::Sqlite => {
            let exprs: Vec<String> = columns
                .iter()
                .map(|(name, ty)| match ty {
                    Ty::Hex => format!("unhex(r.value ->> '{name}') as {name}"),
                    _ => format!("r.value ->> '{name}' as {name}"),
                })
                .collect();
            format!(
                "(select {} from json_each(${n}) as r) as {alias}",
                exprs.join(", ")
            )
        }
    }
}

/// Serializes a [`Timestamp`] as fixed-width text.
pub fn time<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.db_text())
}

/// Serializes an optional [`Timestamp`] as fixed-width text or null.
pub fn opt_time<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.db_text()),
        None => s.serialize_none(),
    }
}

/// Serializes bytes as hex.
pub fn hex<S: Serializer, B: AsRef<[u8]>>(bytes: &B, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(bytes.as_ref()))
}

/// Serializes optional bytes as hex or null.
pub fn opt_hex<S: Serializer, B: AsRef<[u8]>>(bytes: &Option<B>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => s.serialize_str(&to_hex(bytes.as_ref())),
        None => s.serialize_none(),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// A JSON array of rows, as the text bound to a [`source`] parameter.
pub fn array<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("rows are plain structs with string keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_two_digits_per_byte() {
        assert_eq!(to_hex(&[0, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(to_hex(&[]), "");
    }

    #[test]
    fn sources_name_their_columns_on_both_dialects() {
        let columns = [("tenant_id", Ty::Text), ("hash", Ty::Hex), ("at", Ty::Time)];
        let pg = source(Dialect::Postgres, 2, "x", &columns);
        assert_eq!(
            pg,
            "(select r.tenant_id, decode(r.hash, 'hex') as hash, r.at from \
             jsonb_to_recordset($2::jsonb) as r(tenant_id text, hash text, at timestamptz)) as x"
        );
        let lite = source(Dialect::Sqlite, 1, "y", &columns);
        assert_eq!(
            lite,
            "(select r.value ->> 'tenant_id' as tenant_id, unhex(r.value ->> 'hash') as hash, \
             r.value ->> 'at' as at from json_each($1) as r) as y"
        );
    }
}
