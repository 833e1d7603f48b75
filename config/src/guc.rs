//! PostgreSQL parameters (GUCs) as `postgresql.parameters` and the dynamic configuration's
//! `postgresql.parameters` may give them: the names PostgreSQL's configuration file accepts, values that
//! fit on one `postgresql.conf` line, and no recovery or promotion settings, which the agent manages.
//!
//! The checks run while the configuration is deserialized ([`checked_parameters`]), so the YAML file,
//! `bootstrap.dcs`, the DCS `config` key ([`crate::DynamicConfig::from_json`]), `PATCH`/`PUT /config`
//! and `ctl edit-config` all refuse the same things with the same message, naming the key path.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::value::{ParamValue, Parameters};

/// Recovery and promotion settings refused in `parameters`: Patroni's
/// `ConfigHandler._RECOVERY_PARAMETERS` (patroni/postgresql/config.py) plus `standby_mode`, which
/// before PostgreSQL 12 lived in recovery.conf with them. In `parameters` they would reach
/// postgresql.conf and apply to every start of every member, the primary's included: a
/// `recovery_target` or `promote_trigger_file` there can stop or promote a server behind the agent's
/// back.
pub const RECOVERY_PARAMETERS: &[&str] = &[
    "archive_cleanup_command",
    "restore_command",
    "recovery_end_command",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "recovery_min_apply_delay",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "trigger_file",
    "standby_mode",
];

/// The recovery settings the agent itself writes or replaces: the replica's upstream
/// (`primary_conninfo`, `primary_slot_name`, `recovery_target_timeline`) and promotion (it promotes
/// with `pg_ctl promote`, so a trigger file is never needed). The others of [`RECOVERY_PARAMETERS`]
/// are archive-recovery settings Patroni takes from `postgresql.recovery_conf`.
const AGENT_MANAGED: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
    "promote_trigger_file",
    "trigger_file",
    "standby_mode",
];

/// True when `name` is a parameter name PostgreSQL's configuration file accepts: an identifier, or two
/// joined by a dot for an extension's parameter (`auto_explain.log_min_duration`). guc-file.l:
/// `ID {LETTER}{LETTER_OR_DIGIT}*`, `QUALIFIED_ID {ID}"."{ID}`, letters being `A-Z a-z _` and any
/// non-ASCII character, digits `0-9`. Anything else (`=`, a space, a quote, a line break) would
/// change the meaning of the line written to postgresql.conf.
pub fn is_valid_name(name: &str) -> bool {
    fn identifier(part: &str) -> bool {
        let letter = |c: char| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii();
        let mut chars = part.chars();
        chars.next().is_some_and(letter) && chars.all(|c| letter(c) || c.is_ascii_digit())
    }
    match name.split_once('.') {
        None => identifier(name),
        Some((prefix, rest)) => identifier(prefix) && identifier(rest),
    }
}

/// Why `name` (a valid name, see [`is_valid_name`]) set to `value` cannot be in `parameters`, or
/// `None` when it can. Refused: the [`RECOVERY_PARAMETERS`]; `hot_standby` other than on (the agent
/// must query its replicas, so it runs them with `hot_standby = on` whatever the configuration says,
/// as Patroni does; `on` is accepted because Patroni's sample files carry it); a value with a line break
/// or a NUL character, which neither a postgresql.conf line nor the postgres command line can carry.
pub fn refusal(name: &str, value: &ParamValue) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if AGENT_MANAGED.contains(&lower.as_str()) {
        return Some(format!(
            "{name} is managed by the agent, as by Patroni (it sets up each replica's recovery \
             and promotes with pg_ctl promote): remove it from parameters"
        ));
    }
    if RECOVERY_PARAMETERS.contains(&lower.as_str()) {
        return Some(format!(
            "{name} is a recovery setting: in parameters it would apply to every start of every \
             member, the primary's included: move it to postgresql.recovery_conf, which applies \
             to replicas only (as in Patroni), and remove it from parameters"
        ));
    }
    if lower == "hot_standby" && value.as_bool() != Some(true) {
        return Some(format!(
            "hot_standby is managed by the agent, as by Patroni: replicas always run with \
             hot_standby = on (the agent queries them), so {value:?} cannot be honoured: remove it \
             from parameters",
            value = value.as_pg_text()
        ));
    }
    if let ParamValue::Text(text) = value {
        if text.contains(['\n', '\r', '\0']) {
            return Some(
                "the value contains a line break or a NUL character, which neither postgresql.conf \
                 nor the postgres command line can carry"
                    .to_string(),
            );
        }
    }
    None
}

/// The message for a name [`is_valid_name`] refuses (the name is quoted, escapes and all).
fn invalid_name(name: &str) -> String {
    format!(
        "{name:?} is not a valid parameter name: PostgreSQL accepts letters, digits (not first) and \
         _, with one dot between an extension's name and its parameter (auto_explain.log_analyze)"
    )
}

/// Deserializes `parameters` (name → value) refusing what [`is_valid_name`] and [`refusal`] refuse.
///
/// A refused value is reported from inside the value, so the key path names the parameter
/// (`bootstrap.dcs.postgresql.parameters.promote_trigger_file: ...`); an invalid name is reported on
/// the map (`postgresql.parameters: "a\nb" is not a valid parameter name ...`), since the path could
/// not print it.
pub fn checked_parameters<'de, D: Deserializer<'de>>(d: D) -> Result<Parameters, D::Error> {
    checked_map(d, "a map of PostgreSQL parameter names to values", refusal)
}

/// Deserializes `recovery_conf` (Patroni's extra recovery settings of a replica: `restore_command`,
/// `recovery_min_apply_delay`, ...): names as [`is_valid_name`], values on one line, and none of the
/// settings the agent writes itself (`primary_conninfo`, `primary_slot_name`,
/// `recovery_target_timeline`, trigger files, `standby_mode`), which it would override without a word.
/// `recovery_conf:` alone (null) is an empty map.
pub fn checked_recovery_conf<'de, D: Deserializer<'de>>(d: D) -> Result<Parameters, D::Error> {
    checked_map(
        d,
        "a map of recovery setting names to values",
        recovery_refusal,
    )
}

/// Why a `recovery_conf` setting is refused, if it is.
fn recovery_refusal(name: &str, value: &ParamValue) -> Option<String> {
    if AGENT_MANAGED.contains(&name.to_ascii_lowercase().as_str()) {
        return Some(format!(
            "{name} is written by the agent for each replica (its upstream and timeline), as by \
             Patroni: remove it from recovery_conf"
        ));
    }
    match value {
        ParamValue::Text(text) if text.contains(['\n', '\r', '\0']) => Some(
            "the value contains a line break or a NUL character, which postgresql.conf cannot carry"
                .to_string(),
        ),
        _ => None,
    }
}

/// Why a setting is refused, given its name and value (`None`: accepted).
type Check = fn(&str, &ParamValue) -> Option<String>;

/// Deserializes a map of setting names to values, refusing names [`is_valid_name`] refuses (reported
/// on the map, since the key path could not print them) and values `check` refuses (reported from
/// inside the value, so the key path names the setting). `key:` alone (null) is an empty map, as in
/// many Patroni files.
fn checked_map<'de, D: Deserializer<'de>>(
    d: D,
    expecting: &'static str,
    check: Check,
) -> Result<Parameters, D::Error> {
    struct Settings {
        expecting: &'static str,
        check: Check,
    }
    impl<'de> Visitor<'de> for Settings {
        type Value = Parameters;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Parameters, E> {
            Ok(Parameters::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parameters, A::Error> {
            let mut out = Parameters::new();
            while let Some(name) = map.next_key::<String>()? {
                if !is_valid_name(&name) {
                    return Err(de::Error::custom(invalid_name(&name)));
                }
                let value = map.next_value_seed(Checked {
                    name: &name,
                    check: self.check,
                })?;
                out.insert(name, value);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Settings { expecting, check })
}

/// One setting's value, checked against its name.
struct Checked<'a> {
    name: &'a str,
    check: Check,
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = ParamValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ParamValue, D::Error> {
        let value = ParamValue::deserialize(d)?;
        match (self.check)(self.name, &value) {
            Some(why) => Err(de::Error::custom(why)),
            None => Ok(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_conf_refuses_what_the_agent_writes_and_line_breaks() {
        let text = |v: &str| ParamValue::Text(v.into());
        let why = recovery_refusal("Primary_Conninfo", &text("host=x")).unwrap();
        assert!(why.contains("remove it from recovery_conf"), "{why}");
        let why = recovery_refusal("restore_command", &text("cp a b\nrm -rf /")).unwrap();
        assert!(why.contains("line break"), "{why}");
        assert_eq!(recovery_refusal("restore_command", &text("cp %f %p")), None);
    }

    #[test]
    fn names_follow_postgresqls_configuration_file_grammar() {
        for good in [
            "work_mem",
            "_x",
            "x1",
            "auto_explain.log_min_duration",
            "pg_stat_statements.max",
            "WORK_MEM",
            "é_setting",
        ] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "1x",
            "work mem",
            "work_mem = 1",
            "a=b",
            "a\nb",
            "a\rb",
            "a'b",
            "a.b.c",
            ".a",
            "a.",
            "a.1b",
            "a-b",
            "a#b",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_recovery_parameter_is_refused_in_any_case() {
        for name in RECOVERY_PARAMETERS {
            let why = refusal(name, &ParamValue::from("x")).unwrap_or_default();
            assert!(why.starts_with(&format!("{name} is ")), "{name}: {why}");
            assert!(why.ends_with("remove it from parameters"), "{why}");
            assert!(refusal(&name.to_uppercase(), &ParamValue::from("x")).is_some());
        }
        let why = refusal("restore_command", &ParamValue::from("cp %p %f")).unwrap();
        assert!(why.contains("postgresql.recovery_conf"), "{why}");
        let why = refusal("promote_trigger_file", &ParamValue::from("/tmp/t")).unwrap();
        assert!(why.contains("managed by the agent"), "{why}");
    }

    #[test]
    fn hot_standby_on_is_accepted_anything_else_refused() {
        for on in [
            ParamValue::from("on"),
            ParamValue::Bool(true),
            "true".into(),
        ] {
            assert_eq!(refusal("hot_standby", &on), None, "{on:?}");
        }
        for off in [
            ParamValue::from("off"),
            ParamValue::Bool(false),
            "maybe".into(),
        ] {
            let why = refusal("hot_standby", &off).unwrap_or_default();
            assert!(why.contains("hot_standby = on"), "{off:?}: {why}");
        }
    }

    #[test]
    fn values_with_line_breaks_are_refused() {
        for bad in ["a\nb", "a\rb", "a\0b", "\n"] {
            let why = refusal("log_line_prefix", &ParamValue::from(bad)).unwrap_or_default();
            assert!(why.contains("line break"), "{bad:?}: {why}");
        }
        assert_eq!(
            refusal("log_line_prefix", &ParamValue::from("%m [%p] '")),
            None
        );
        assert_eq!(refusal("work_mem", &ParamValue::Int(4096)), None);
    }

    #[test]
    fn checked_parameters_names_the_parameter_in_the_path() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "checked_parameters")]
            #[allow(dead_code)]
            parameters: Parameters,
        }
        let parse = |v: serde_json::Value| {
            serde_path_to_error::deserialize::<_, Holder>(v).map_err(|e| {
                let path = e.path().to_string();
                format!("{path}: {}", e.into_inner())
            })
        };
        let e = parse(serde_json::json!({"parameters": {"work_mem": "4MB", "trigger_file": "/t"}}))
            .unwrap_err();
        assert!(
            e.starts_with("parameters.trigger_file: trigger_file is managed"),
            "{e}"
        );
        let e = parse(serde_json::json!({"parameters": {"a=b": 1}})).unwrap_err();
        assert!(
            e.starts_with("parameters: \"a=b\" is not a valid parameter name"),
            "{e}"
        );
        assert!(parse(serde_json::json!({"parameters": {"work_mem": "4MB"}})).is_ok());
        assert!(parse(serde_json::json!({"parameters": null})).is_ok());
    }
}
