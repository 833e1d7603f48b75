//! `edit-config` and `show-config`: the DCS `config` key as YAML, changed with `-s key.path=value`,
//! `-p pgparam=value`, `--apply FILE` (merge), `--replace FILE` or `$EDITOR`; the diff is shown and
//! the write is compare-and-set (patronictl's "Config modification aborted due to concurrent
//! changes").

use serde_json::{Map, Value};

/// The configuration as patronictl shows it: YAML, keys sorted, passwords masked.
pub fn format_config(v: &Value) -> String {
    let masked = praetor_agent::api::actions::mask_passwords(v.clone());
    match &masked {
        Value::Object(m) if m.is_empty() => String::new(),
        _ => serde_yaml::to_string(&masked).unwrap_or_default(),
    }
}

/// Parses `-s` / `-p` values as YAML scalars (`true`, `100`, `null`, `'on'`), as patronictl does.
fn yaml_value(text: &str) -> Result<Value, String> {
    let y: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("cannot parse value {text:?}: {e}"))?;
    serde_json::to_value(y).map_err(|e| format!("cannot use value {text:?}: {e}"))
}

/// Sets (or with `null`, deletes) the dotted `path` in `data`.
pub fn set_path(data: &mut Value, path: &[&str], value: Value) {
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    let map = data.as_object_mut().expect("made an object just above");
    match path {
        [] => {}
        [last] => {
            if value.is_null() {
                map.remove(*last);
            } else {
                map.insert(last.to_string(), value);
            }
        }
        [first, rest @ ..] => {
            if value.is_null() && !map.contains_key(*first) {
                return;
            }
            let child = map.entry(first.to_string()).or_insert(Value::Null);
            set_path(child, rest, value);
        }
    }
}

/// Applies `-s key.path=value` and `-p name=value` pairs.
pub fn apply_pairs(data: &mut Value, set: &[String], pg: &[String]) -> Result<(), String> {
    for kv in set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("Invalid parameter setting {kv}: expected key.path=value"))?;
        let path: Vec<&str> = k.trim().split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(format!("Invalid parameter setting {kv}: empty key"));
        }
        set_path(data, &path, yaml_value(v)?);
    }
    for kv in pg {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("Invalid parameter setting {kv}: expected name=value"))?;
        set_path(
            data,
            &["postgresql", "parameters", k.trim()],
            yaml_value(v)?,
        );
    }
    Ok(())
}

/// A YAML document as JSON (an empty file is `{}`).
pub fn parse_yaml_doc(text: &str, what: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let y: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("{what}: not valid YAML: {e}"))?;
    let v = serde_json::to_value(y).map_err(|e| format!("{what}: {e}"))?;
    if !v.is_object() {
        return Err(format!("{what}: the configuration must be a mapping"));
    }
    Ok(v)
}

/// A unified diff of two texts (three lines of context), as `patronictl edit-config` shows.
pub fn unified_diff(before: &str, after: &str, from: &str, to: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // Longest common subsequence table (configurations are small).
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (' ' | '-' | '+', line, index in a, index in b).
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    if ops.iter().all(|(c, _)| *c == ' ') {
        return String::new();
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (c, _))| *c != ' ')
        .map(|(k, _)| k)
        .collect();
    // Group changes into hunks.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let start = k.saturating_sub(CONTEXT);
        let end = (k + CONTEXT + 1).min(ops.len());
        match hunks.last_mut() {
            Some((_, e)) if start <= *e => *e = end.max(*e),
            _ => hunks.push((start, end)),
        }
    }
    let mut out = format!("--- {from}\n+++ {to}\n");
    for (start, end) in hunks {
        let old_start = ops[..start].iter().filter(|(c, _)| *c != '+').count();
        let new_start = ops[..start].iter().filter(|(c, _)| *c != '-').count();
        let old_len = ops[start..end].iter().filter(|(c, _)| *c != '+').count();
        let new_len = ops[start..end].iter().filter(|(c, _)| *c != '-').count();
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            old_start + usize::from(old_len > 0),
            old_len,
            new_start + usize::from(new_len > 0),
            new_len
        ));
        for (c, line) in &ops[start..end] {
            out.push(*c);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_and_pg_pairs_like_patronictl() {
        let mut c = json!({"ttl": 30, "postgresql": {"parameters": {"max_connections": 100}}});
        apply_pairs(
            &mut c,
            &[
                "synchronous_mode=true".into(),
                "loop_wait=5".into(),
                "postgresql.use_slots=on".into(),
                "ttl=null".into(),
                "missing.key=null".into(),
            ],
            &["max_connections=500".into(), "wal_level='logical'".into()],
        )
        .unwrap();
        assert_eq!(
            c,
            json!({
                "synchronous_mode": true,
                "loop_wait": 5,
                "postgresql": {
                    "use_slots": "on",
                    "parameters": {"max_connections": 500, "wal_level": "logical"}
                }
            })
        );
        assert!(apply_pairs(&mut c, &["novalue".into()], &[]).is_err());
        assert!(apply_pairs(&mut c, &["a..b=1".into()], &[]).is_err());
    }

    #[test]
    fn yaml_documents() {
        assert_eq!(parse_yaml_doc("", "f").unwrap(), json!({}));
        assert_eq!(
            parse_yaml_doc("ttl: 20\n", "f").unwrap(),
            json!({"ttl": 20})
        );
        assert!(parse_yaml_doc("- 1\n", "f").is_err());
        assert!(parse_yaml_doc("a: [", "f").is_err());
        assert_eq!(
            format_config(&json!({"b": 1, "a": {"password": "x"}})),
            "a:\n  password: '********'\nb: 1\n"
        );
    }

    #[test]
    fn diff_shows_changed_lines_with_context() {
        let before = "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\n";
        let after = "a: 1\nb: 2\nc: 3\nd: 40\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\n";
        let d = unified_diff(before, after, "before", "after");
        assert_eq!(
            d,
            "--- before\n+++ after\n@@ -1,8 +1,9 @@\n a: 1\n b: 2\n c: 3\n-d: 4\n+d: 40\n e: 5\n f: 6\n g: 7\n h: 8\n+i: 9\n"
        );
        assert_eq!(unified_diff(before, before, "x", "y"), "");
    }
}
