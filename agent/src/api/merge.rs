//! JSON merge patch (RFC 7396), as Patroni's `PATCH /config` and `patronictl edit-config -s` apply
//! it: objects merge key by key, `null` deletes a key, anything else replaces.

use serde_json::Value;

/// Applies `patch` to `target` in place. Returns whether `target` changed.
pub fn merge_patch(target: &mut Value, patch: &Value) -> bool {
    let Value::Object(patch_map) = patch else {
        let changed = target != patch;
        *target = patch.clone();
        return changed;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let map = target.as_object_mut().expect("made an object just above");
    let mut changed = false;
    for (k, v) in patch_map {
        if v.is_null() {
            changed |= map.remove(k).is_some();
        } else if v.is_object() {
            let entry = map.entry(k.clone()).or_insert(Value::Null);
            let was_object = entry.is_object();
            changed |= merge_patch(entry, v) || !was_object;
        } else if map.get(k) != Some(v) {
            map.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7396_examples() {
        let rows = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, want) in rows {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn reports_whether_anything_changed() {
        let mut c = json!({"ttl":30,"postgresql":{"parameters":{"max_connections":100}}});
        assert!(!merge_patch(&mut c, &json!({"ttl":30})));
        assert!(!merge_patch(&mut c, &json!({"missing":null})));
        assert!(merge_patch(
            &mut c,
            &json!({"postgresql":{"parameters":{"max_connections":200}}})
        ));
        assert_eq!(c["postgresql"]["parameters"]["max_connections"], 200);
        assert!(merge_patch(&mut c, &json!({"pause":true})));
    }
}
