//! Turning an event's raw `data` into its typed form, with every problem
//! reported as a `{"field", "message"}` pair (the 422 `validation_failed`
//! answer), and the checks serde cannot express.

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// One problem with one field of `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Dotted path inside `data`, e.g. `smtp.port`.
    pub field: String,
    /// What is wrong, in words a host engineer can act on.
    pub message: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Deserializes `data`; a structural problem (wrong type, missing or unknown
/// field) becomes one [`FieldError`] with the field's dotted path.
pub fn parse_data<T: DeserializeOwned>(data: &RawValue) -> Result<T, Vec<FieldError>> {
    let mut deserializer = serde_json::Deserializer::from_str(data.get());
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        // The root prints as ".", and so does a field named "."; only the
        // segments tell them apart.
        let path = match error.path().iter().next() {
            Some(_) => error.path().to_string(),
            None => String::new(),
        };
        let inner = error.into_inner().to_string();
        vec![field_error_from_serde(&path, &inner)]
    })
}

/// `deserialize_with` for an object nested in `data` (`user`, `smtp`):
/// serde's derived structs also take a JSON array of their fields in order,
/// which the contract does not allow; this asks for a map only, so an array
/// is a wrong type naming the field. (`data` itself is checked for `{` by
/// the envelope.)
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(ObjectOnly(deserializer))
}

/// A deserializer that reads whatever is asked of it as a map.
struct ObjectOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

fn field_error_from_serde(path: &str, message: &str) -> FieldError {
    let message = message.split(" at line ").next().unwrap_or(message);
    // An unknown field's path already ends with its name; a missing field's
    // path is its parent's, and serde names the field in the message.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest.split_once(", expected ").map(|(_, e)| e);
        let message = match expected {
            Some(expected) => format!("unknown field; expected {expected}"),
            None => "unknown field".to_string(),
        };
        return FieldError::new(path, message);
    }
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let field = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        return FieldError::new(field, "is required");
    }
    FieldError::new(if path.is_empty() { "data" } else { path }, message)
}

/// Collects problems found after deserializing.
#[derive(Debug, Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem.
    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// An optional integer must lie in `min..=max`.
    pub fn range(&mut self, field: &str, value: Option<i64>, min: i64, max: i64) {
        if let Some(value) = value
            && !(min..=max).contains(&value)
        {
            self.fail(field, format!("must be between {min} and {max}"));
        }
    }

    /// Text of `min..=max` characters without control characters (which
    /// covers CR and LF, hence header injection).
    pub fn text(&mut self, field: &str, value: &str, min: usize, max: usize) {
        let length = value.chars().count();
        if length < min || length > max {
            self.fail(field, format!("must be {min} to {max} characters long"));
        } else if value.chars().any(char::is_control) {
            self.fail(
                field,
                "must not contain control characters (such as line breaks)",
            );
        }
    }

    /// An id chosen by the host: 1–128 characters, no control characters.
    pub fn id(&mut self, field: &str, value: &str) {
        self.text(field, value, 1, 128);
    }

    /// A single email address (`local@domain`, at most 254 characters, no
    /// quoted local part): [`email2fa_workers::address::recipient`], the
    /// parser the workers send with, so that what passes here can be sent.
    pub fn email(&mut self, field: &str, value: &str) {
        if let Err(error) = email2fa_workers::address::recipient(value) {
            self.fail(field, error.to_string());
        }
    }

    /// Ok when nothing failed.
    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        id: String,
        #[serde(deserialize_with = "object")]
        smtp: Inner,
    }

    fn errors(json: &str) -> Vec<FieldError> {
        let raw: Box<RawValue> = serde_json::from_str(json).expect("json");
        parse_data::<Outer>(&raw).expect_err("invalid")
    }

    #[test]
    fn structural_problems_name_the_dotted_field() {
        assert_eq!(errors(r#"{"smtp":{"port":1}}"#)[0].field, "id");
        assert_eq!(errors(r#"{"smtp":{"port":1}}"#)[0].message, "is required");
        assert_eq!(
            errors(r#"{"id":"a","smtp":{"port":"x"}}"#)[0].field,
            "smtp.port"
        );
        let unknown = &errors(r#"{"id":"a","smtp":{"port":1,"colour":1}}"#)[0];
        assert_eq!(unknown.field, "smtp.colour");
        assert!(unknown.message.starts_with("unknown field"));
        assert_eq!(
            errors(r#"{"id":"a","smtp":{"port":70000}}"#)[0].field,
            "smtp.port"
        );
        // Found by tests/properties.rs: a field named "." was named "".
        let dot = &errors(r#"{".":null,"id":"a","smtp":{"port":1}}"#)[0];
        assert_eq!(
            (dot.field.as_str(), dot.message.starts_with("unknown field")),
            (".", true)
        );
        assert_eq!(errors("[]")[0].field, "data");
    }

    #[test]
    fn a_nested_object_given_as_an_array_is_a_wrong_type_naming_it() {
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"id":"a","smtp":{"port":1}}"#).expect("json");
        assert!(parse_data::<Outer>(&raw).is_ok());
        // serde's derived struct would take the fields in order: [1].
        let array = &errors(r#"{"id":"a","smtp":[1]}"#)[0];
        assert_eq!(array.field, "smtp");
        assert!(array.message.contains("expected"), "{}", array.message);
        assert_eq!(errors(r#"{"id":"a","smtp":"x"}"#)[0].field, "smtp");
    }

    #[test]
    fn text_checks_refuse_line_breaks_and_bad_addresses() {
        let mut checks = Checks::new();
        checks.text("from_name", "Shop\r\nBcc: x@evil.test", 1, 100);
        checks.email("a", "jane@example.com");
        checks.email("b", "jane@example.com\r\nBcc: x@evil.test");
        checks.email("c", "not-an-address");
        checks.range("n", Some(11), 6, 10);
        let failed: Vec<String> = checks
            .finish()
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(failed, ["from_name", "b", "c", "n"]);
    }
}
