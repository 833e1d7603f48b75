//! Value types shared by the configuration model.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A PostgreSQL parameter value as written in YAML or JSON (`on`, `128MB`, `200`, `true`).
///
/// Patroni accepts strings, numbers and booleans for `postgresql.parameters`; PostgreSQL itself only sees
/// text, so the value is kept as the text PostgreSQL will read: booleans become `on`/`off`, numbers their
/// decimal form. Serialized back (to the DCS `config` key) as a JSON string, number or bool as received.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A string value, written as is (quoted in postgresql.conf).
    Text(String),
    /// An integer value.
    Int(i64),
    /// A floating-point value.
    Float(f64),
    /// A boolean value (`on` / `off` for PostgreSQL).
    Bool(bool),
}

impl ParamValue {
    /// The value as PostgreSQL text, without quoting: `true` → `on`, `10` → `10`.
    pub fn as_pg_text(&self) -> String {
        match self {
            ParamValue::Text(s) => s.clone(),
            ParamValue::Int(i) => i.to_string(),
            ParamValue::Float(f) => f.to_string(),
            ParamValue::Bool(true) => "on".to_string(),
            ParamValue::Bool(false) => "off".to_string(),
        }
    }

    /// The value parsed as an integer, when it is one (`"10"` and `10` both give 10).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ParamValue::Int(i) => Some(*i),
            ParamValue::Text(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The value read as a PostgreSQL boolean (`on`, `true`, `yes`, `1`, and their negations).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(b) => Some(*b),
            ParamValue::Int(i) => Some(*i != 0),
            ParamValue::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => Some(true),
                "off" | "false" | "no" | "0" => Some(false),
                _ => None,
            },
            ParamValue::Float(_) => None,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_pg_text())
    }
}

impl From<&str> for ParamValue {
    fn from(s: &str) -> Self {
        ParamValue::Text(s.to_string())
    }
}

impl From<String> for ParamValue {
    fn from(s: String) -> Self {
        ParamValue::Text(s)
    }
}

impl From<i64> for ParamValue {
    fn from(i: i64) -> Self {
        ParamValue::Int(i)
    }
}

impl From<bool> for ParamValue {
    fn from(b: bool) -> Self {
        ParamValue::Bool(b)
    }
}

impl Serialize for ParamValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ParamValue::Text(v) => s.serialize_str(v),
            ParamValue::Int(v) => s.serialize_i64(*v),
            ParamValue::Float(v) => s.serialize_f64(*v),
            ParamValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ParamValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamValue, E> {
                Ok(ParamValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamValue, E> {
                i64::try_from(v)
                    .map(ParamValue::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamValue, E> {
                Ok(ParamValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::Text(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ParamValue, E> {
                Ok(ParamValue::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// PostgreSQL parameters by name (`postgresql.parameters`), sorted for stable output.
pub type Parameters = BTreeMap<String, ParamValue>;

/// A `host:port` address as Patroni writes them (`0.0.0.0:5432`, `127.0.0.1:8008`, `[::1]:5432`).
///
/// `host` may be a comma-separated list for listen addresses (`127.0.0.1,10.0.0.1:5432`), as Patroni
/// allows for `postgresql.listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Host name, IP address, `*`, or a comma-separated list of them.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Address {
    /// A host to connect to on this machine: the first listed host, with wildcards (`*`, `0.0.0.0`,
    /// `::`) replaced by `127.0.0.1`.
    pub fn local_connect_host(&self) -> String {
        let first = self.host.split(',').next().unwrap_or("").trim();
        match first {
            "" | "*" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
            h => h.to_string(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("expected host:port, got {s:?}"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port {port:?} in {s:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("missing host in {s:?}"));
        }
        Ok(Address {
            host: host.to_string(),
            port,
        })
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An integer type [`lenient_int`] reads, with its range for error messages that say what is
/// accepted.
pub trait IntRange: TryFrom<i128> {
    /// The smallest value.
    const MIN: i128;
    /// The largest value.
    const MAX: i128;
}

macro_rules! int_range {
    ($($t:ty),*) => {$(
        impl IntRange for $t {
            const MIN: i128 = <$t>::MIN as i128;
            const MAX: i128 = <$t>::MAX as i128;
        }
    )*};
}
int_range!(u16, u32, u64, usize, i32, i64, i128);

/// Deserializes an integer that may also be written as a decimal string (`30` or `"30"`), as Patroni
/// accepts; anything else is an error naming what was expected. A value that does not fit `T` (a
/// negative count, a number past `T`'s maximum) is an error giving the accepted range.
pub fn lenient_int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: IntRange,
{
    struct V;
    impl Visitor<'_> for V {
        type Value = i128;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
            Ok(v.into())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
            Ok(v.into())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
            v.trim()
                .parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    let v = d.deserialize_any(V)?;
    T::try_from(v).map_err(|_| {
        de::Error::custom(format!(
            "integer {v} out of range: give {} to {}",
            T::MIN,
            T::MAX
        ))
    })
}

/// Like [`lenient_int`] for an optional field.
pub fn lenient_opt_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: IntRange,
{
    #[derive(Deserialize)]
    struct Wrap<T: IntRange>(#[serde(deserialize_with = "lenient_int")] T);
    Option::<Wrap<T>>::deserialize(d).map(|o| o.map(|w| w.0))
}

/// Deserializes a boolean also written as Patroni's strings (`"true"`, `"on"`, `"yes"`, `"false"`, ...).
pub fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a boolean")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" | "1" => Ok(true),
                "false" | "off" | "no" | "0" | "" => Ok(false),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

/// A list of strings written either as a YAML list or as one comma-separated string
/// (`hosts: a:2379,b:2379`), as Patroni accepts for DCS hosts.
pub fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Csv(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_parses_ipv4_ipv6_and_lists() {
        let a: Address = "0.0.0.0:5432".parse().unwrap();
        assert_eq!(a.port, 5432);
        assert_eq!(a.local_connect_host(), "127.0.0.1");
        let a: Address = "[::1]:8008".parse().unwrap();
        assert_eq!(a.host, "::1");
        assert_eq!(a.to_string(), "[::1]:8008");
        let a: Address = "10.0.0.1,127.0.0.1:5432".parse().unwrap();
        assert_eq!(a.local_connect_host(), "10.0.0.1");
        assert!("5432".parse::<Address>().is_err());
        assert!("host:port".parse::<Address>().is_err());
    }

    #[test]
    fn param_values_render_as_postgres_text() {
        let p: Parameters = serde_yaml::from_str("a: on\nb: 10\nc: '128MB'\nd: false\n").unwrap();
        assert_eq!(p["a"].as_pg_text(), "on");
        assert_eq!(p["b"].as_pg_text(), "10");
        assert_eq!(p["c"].as_pg_text(), "128MB");
        assert_eq!(p["d"].as_pg_text(), "off");
    }
}
