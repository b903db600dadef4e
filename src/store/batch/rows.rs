//! Rows as parameters: how a batch hands many rows to one statement.
//!
//! A batch's writes on PostgreSQL take one typed array per column
//! ([`columns`], turned into a derived table by [`unnest_source`]): in
//! PostgreSQL's binary format they cost the server no parsing. Everything
//! else (SQLite's writes, and the short key lists the reads take on both
//! backends) takes one parameter per table, a JSON array of objects whose
//! keys are column names, turned into a derived table by [`source`]:
//! `jsonb_to_recordset` on PostgreSQL, `json_each` on SQLite. Everything
//! after the derived table is the same SQL on both backends, and no
//! statement text depends on the number of rows, so each is prepared once
//! per connection.
//!
//! Times travel in JSON as fixed-width RFC 3339 text (six fractional
//! digits and `Z`: what SQLite stores, and what PostgreSQL parses), bytes
//! as hex; the same structs give both forms.

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

/// PostgreSQL: `unnest($first::text[], $first+1::integer[], …) as
/// {alias}(columns)`: the rows bound as one typed array per column (see
/// [`columns`]), parameters `$first`… in the order of `columns`. Arrays
/// in PostgreSQL's binary format cost it no parsing, where a JSON array
/// costs `jsonb_in` and a key lookup and an input function per cell.
pub fn unnest_source(first: usize, alias: &str, columns: &[(&str, Ty)]) -> String {
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| {
            let sql = match ty {
                Ty::Text => "text",
                Ty::Int => "integer",
                Ty::Bool => "boolean",
                Ty::Time => "timestamptz",
                Ty::Hex => "bytea",
            };
            format!("${}::{sql}[]", first + i)
        })
        .collect();
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    format!(
        "unnest({}) as {alias}({})",
        arrays.join(", "),
        names.join(", ")
    )
}

/// One column of rows, typed for binding as a PostgreSQL array.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// `text[]`.
    Text(Vec<Option<String>>),
    /// `integer[]`.
    Int(Vec<Option<i32>>),
    /// `boolean[]`.
    Bool(Vec<Option<bool>>),
    /// `timestamptz[]`.
    Time(Vec<Option<chrono::DateTime<chrono::Utc>>>),
    /// `bytea[]`.
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Column {
    fn new(ty: Ty, capacity: usize) -> Self {
        match ty {
            Ty::Text => Self::Text(Vec::with_capacity(capacity)),
            Ty::Int => Self::Int(Vec::with_capacity(capacity)),
            Ty::Bool => Self::Bool(Vec::with_capacity(capacity)),
            Ty::Time => Self::Time(Vec::with_capacity(capacity)),
            Ty::Hex => Self::Bytes(Vec::with_capacity(capacity)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Text(v) => v.len(),
            Self::Int(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::Time(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }

    fn push_null(&mut self) {
        match self {
            Self::Text(v) => v.push(None),
            Self::Int(v) => v.push(None),
            Self::Bool(v) => v.push(None),
            Self::Time(v) => v.push(None),
            Self::Bytes(v) => v.push(None),
        }
    }

    /// Binds this column as the next parameter of `query`.
    pub fn bind<'q, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        match self {
            Self::Text(v) => query.bind(v),
            Self::Int(v) => query.bind(v),
            Self::Bool(v) => query.bind(v),
            Self::Time(v) => query.bind(v),
            Self::Bytes(v) => query.bind(v),
        }
    }
}

/// The rows as one [`Column`] per entry of `columns`: the same structs
/// that [`array`] turns into JSON, each field put in the column of its
/// name (times and bytes through [`time`] and [`hex`] arrive as
/// microseconds and raw bytes; as text they are parsed).
pub fn columns<T: serde::Serialize>(
    rows: &[T],
    columns: &[(&str, Ty)],
) -> Result<Vec<Column>, ColumnError> {
    let mut out: Vec<Column> = columns
        .iter()
        .map(|(_, ty)| Column::new(*ty, rows.len()))
        .collect();
    for (n, row) in rows.iter().enumerate() {
        row.serialize(columnar::Target::Row {
            names: columns,
            columns: &mut out,
        })?;
        // A field the struct does not have is null.
        for column in &mut out {
            if column.len() == n {
                column.push_null();
            }
        }
    }
    Ok(out)
}

/// A row that does not fit its columns: a programming error, reported
/// rather than bound.
#[derive(Debug, thiserror::Error)]
#[error("a row does not fit its columns: {0}")]
pub struct ColumnError(String);

impl serde::ser::Error for ColumnError {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        Self(msg.to_string())
    }
}

/// The serializer behind [`columns`]: a struct's fields, each into the
/// column of its name.
mod columnar {
    use serde::ser::{Impossible, Serialize, SerializeStruct, Serializer};

    use super::{Column, ColumnError, Ty};

    /// A row (a struct, whose fields go to the columns of their names),
    /// or one field's value, into its column.
    pub(super) enum Target<'a> {
        Row {
            names: &'a [(&'a str, Ty)],
            columns: &'a mut [Column],
        },
        Cell {
            name: &'static str,
            column: &'a mut Column,
        },
    }

    impl Target<'_> {
        fn refuse<T>(&self, what: &str) -> Result<T, ColumnError> {
            match self {
                Self::Row { .. } => Target::refusal(what, None),
                Self::Cell { name, .. } => Target::refusal(what, Some(name)),
            }
        }

        /// Pushes one value with `push` if this is a cell whose column
        /// takes it.
        fn cell(
            self,
            what: &str,
            push: impl FnOnce(&'static str, &mut Column) -> Option<Result<(), ColumnError>>,
        ) -> Result<(), ColumnError> {
            // The refusal is formatted only when it happens: this runs for
            // every cell of every row the ingress writes.
            match self {
                Self::Cell { name, column } => match push(name, column) {
                    Some(pushed) => pushed,
                    None => Target::refusal(what, Some(name)),
                },
                Self::Row { .. } => Target::refusal(what, None),
            }
        }

        fn refusal<T>(what: &str, column: Option<&str>) -> Result<T, ColumnError> {
            Err(ColumnError(match column {
                None => format!("{what} is not a row"),
                Some(name) => format!("{what} for column {name}"),
            }))
        }
    }

    impl SerializeStruct for Target<'_> {
        type Ok = ();
        type Error = ColumnError;

        fn serialize_field<T: ?Sized + Serialize>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), ColumnError> {
            let Self::Row { names, columns } = self else {
                return self.refuse("a struct");
            };
            let index = names
                .iter()
                .position(|(name, _)| *name == key)
                .ok_or_else(|| ColumnError(format!("no column {key}")))?;
            value.serialize(Target::Cell {
                name: key,
                column: &mut columns[index],
            })
        }

        fn end(self) -> Result<(), ColumnError> {
            Ok(())
        }
    }

    macro_rules! refused {
        ($($method:ident($($arg:ty),*)),* $(,)?) => {
            $(fn $method(self, $(_: $arg),*) -> Result<(), ColumnError> {
                self.refuse(stringify!($method))
            })*
        };
    }

    impl<'a> Serializer for Target<'a> {
        type Ok = ();
        type Error = ColumnError;
        type SerializeSeq = Impossible<(), ColumnError>;
        type SerializeTuple = Impossible<(), ColumnError>;
        type SerializeTupleStruct = Impossible<(), ColumnError>;
        type SerializeTupleVariant = Impossible<(), ColumnError>;
        type SerializeMap = Impossible<(), ColumnError>;
        type SerializeStruct = Self;
        type SerializeStructVariant = Impossible<(), ColumnError>;

        /// Not human-readable: [`super::time`] and [`super::hex`] hand over
        /// microseconds and raw bytes rather than text to be parsed back.
        fn is_human_readable(&self) -> bool {
            false
        }

        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, ColumnError> {
            match self {
                Self::Row { .. } => Ok(self),
                Self::Cell { .. } => self.refuse("a struct"),
            }
        }

        fn serialize_str(self, v: &str) -> Result<(), ColumnError> {
            self.cell("text", |name, column| {
                Some(match column {
                    Column::Text(c) => {
                        c.push(Some(v.to_owned()));
                        Ok(())
                    }
                    Column::Time(c) => chrono::DateTime::parse_from_rfc3339(v)
                        .map(|t| c.push(Some(t.with_timezone(&chrono::Utc))))
                        .map_err(|e| ColumnError(format!("{name}: {e}"))),
                    Column::Bytes(c) => super::from_hex(v)
                        .map(|b| c.push(Some(b)))
                        .ok_or_else(|| ColumnError(format!("{name}: not hex"))),
                    _ => return None,
                })
            })
        }
        fn serialize_i32(self, v: i32) -> Result<(), ColumnError> {
            self.cell("an integer", |_, column| match column {
                Column::Int(c) => {
                    c.push(Some(v));
                    Some(Ok(()))
                }
                _ => None,
            })
        }
        /// An integer column takes it if it fits; a time column takes it
        /// as microseconds since the epoch (a [`super::time`]).
        fn serialize_i64(self, v: i64) -> Result<(), ColumnError> {
            if let Self::Cell {
                name,
                column: Column::Time(c),
            } = self
            {
                let t = chrono::DateTime::from_timestamp_micros(v)
                    .ok_or_else(|| ColumnError(format!("{name}: time out of range")))?;
                c.push(Some(t));
                return Ok(());
            }
            match i32::try_from(v) {
                Ok(v) => self.serialize_i32(v),
                Err(_) => self.refuse("a 64-bit integer"),
            }
        }
        fn serialize_bytes(self, v: &[u8]) -> Result<(), ColumnError> {
            self.cell("bytes", |_, column| match column {
                Column::Bytes(c) => {
                    c.push(Some(v.to_vec()));
                    Some(Ok(()))
                }
                _ => None,
            })
        }
        fn serialize_bool(self, v: bool) -> Result<(), ColumnError> {
            self.cell("a boolean", |_, column| match column {
                Column::Bool(c) => {
                    c.push(Some(v));
                    Some(Ok(()))
                }
                _ => None,
            })
        }
        fn serialize_none(self) -> Result<(), ColumnError> {
            self.cell("null", |_, column| {
                column.push_null();
                Some(Ok(()))
            })
        }
        fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), ColumnError> {
            value.serialize(self)
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<(), ColumnError> {
            value.serialize(self)
        }

        refused!(
            serialize_unit(),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_f32(f32),
            serialize_f64(f64),
            serialize_char(char),
            serialize_unit_struct(&'static str),
            serialize_unit_variant(&'static str, u32, &'static str),
        );

        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), ColumnError> {
            self.refuse("an enum")
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ColumnError> {
            self.refuse("a sequence")
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ColumnError> {
            self.refuse("a tuple")
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, ColumnError> {
            self.refuse("a tuple")
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, ColumnError> {
            self.refuse("an enum")
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ColumnError> {
            self.refuse("a map")
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, ColumnError> {
            self.refuse("an enum")
        }
    }
}

/// Serializes a [`Timestamp`] as fixed-width text (JSON, for SQLite), or
/// as microseconds since the epoch for [`columns`].
pub fn time<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&t.db_text())
    } else {
        s.serialize_i64(t.as_datetime().timestamp_micros())
    }
}

/// Serializes an optional [`Timestamp`] as [`time`] or null.
pub fn opt_time<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => time(t, s),
        None => s.serialize_none(),
    }
}

/// Serializes bytes as hex (JSON, for SQLite), or as bytes for [`columns`].
pub fn hex<S: Serializer, B: AsRef<[u8]>>(bytes: &B, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&to_hex(bytes.as_ref()))
    } else {
        s.serialize_bytes(bytes.as_ref())
    }
}

/// Serializes optional bytes as [`hex`] or null.
pub fn opt_hex<S: Serializer, B: AsRef<[u8]>>(bytes: &Option<B>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => hex(bytes, s),
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

fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
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

    #[derive(serde::Serialize)]
    struct Sample<'a> {
        id: &'a str,
        note: Option<&'a str>,
        tries: i32,
        done: bool,
        #[serde(serialize_with = "time")]
        at: Timestamp,
        #[serde(serialize_with = "opt_hex")]
        hash: Option<Vec<u8>>,
    }

    const SAMPLE: [(&str, Ty); 7] = [
        ("id", Ty::Text),
        ("note", Ty::Text),
        ("tries", Ty::Int),
        ("done", Ty::Bool),
        ("at", Ty::Time),
        ("hash", Ty::Hex),
        ("absent", Ty::Text),
    ];

    #[test]
    fn rows_become_typed_columns_with_nulls_where_a_value_is_missing() {
        let at = Timestamp::from(
            chrono::DateTime::from_timestamp(1_800_000_000, 123_456_000).expect("valid"),
        );
        let rows = [
            Sample {
                id: "a",
                note: Some("x"),
                tries: 3,
                done: true,
                at,
                hash: Some(vec![0, 0xab]),
            },
            Sample {
                id: "b",
                note: None,
                tries: -1,
                done: false,
                at,
                hash: None,
            },
        ];
        let columns = columns(&rows, &SAMPLE).expect("fits");
        assert_eq!(
            columns,
            vec![
                Column::Text(vec![Some("a".into()), Some("b".into())]),
                Column::Text(vec![Some("x".into()), None]),
                Column::Int(vec![Some(3), Some(-1)]),
                Column::Bool(vec![Some(true), Some(false)]),
                Column::Time(vec![Some(at.as_datetime()), Some(at.as_datetime())]),
                Column::Bytes(vec![Some(vec![0, 0xab]), None]),
                Column::Text(vec![None, None]),
            ]
        );
    }

    #[test]
    fn a_field_without_a_column_or_of_another_type_is_an_error() {
        let row = [Sample {
            id: "a",
            note: None,
            tries: 1,
            done: true,
            at: Timestamp::now(),
            hash: None,
        }];
        let without_hash = columns(&row, &SAMPLE[..5]).expect_err("hash has no column");
        assert!(
            without_hash.to_string().contains("no column hash"),
            "{without_hash}"
        );
        let mut mistyped = SAMPLE;
        mistyped[2] = ("tries", Ty::Text);
        let err = columns(&row, &mistyped).expect_err("tries is an integer");
        assert!(err.to_string().contains("column tries"), "{err}");
    }

    #[test]
    fn unnest_sources_take_one_typed_array_per_column() {
        assert_eq!(
            unnest_source(3, "x", &SAMPLE[..6]),
            "unnest($3::text[], $4::text[], $5::integer[], $6::boolean[], \
             $7::timestamptz[], $8::bytea[]) as x(id, note, tries, done, at, hash)"
        );
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
