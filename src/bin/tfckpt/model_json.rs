//! The JSON files of the `tfckpt init` contract (README, Command line): MODEL.json (the variables
//! of the current graph) and MAP.json (the assignment map). Errors say which entry is wrong and
//! why.

use serde_json::Value;

use tfckpt::{AssignmentMap, Target};
use tfckpt::{DType, Device};
use tfckpt::{ErrorKind, Result};
use tfckpt::{Init, VariableStore};

fn bad(what: &str, reason: String) -> tfckpt::Error {
    ErrorKind::InvalidArgument(format!("{what}: {reason}")).into()
}

fn parse(what: &str, text: &str) -> Result<Value> {
    serde_json::from_str::<Strict>(text)
        .map(|s| s.0)
        .map_err(|e| bad(what, format!("not valid JSON: {e}")))
}

/// A JSON value in which no object repeats a key: serde_json's `Value` would keep the last one
/// silently, dropping an assignment or a field.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.into()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object (to repeat a checkpoint key, \
                     give MAP.json as an array of [key, target] pairs)"
                )));
            }
            let Strict(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

/// Builds a [`VariableStore`] from MODEL.json text:
/// `{"variables": [{"name", "shape", "dtype", "partitions"?, "device"?, "initializer"?}, ...]}`.
/// A `device` places the variable (`"cpu"`, `"cuda:N"`); a partitioned variable takes one device
/// or an array of one per part.
/// Refuses a key of object `v` that is not one of `keys`: a misspelt optional key
/// (`"initialiser"`, `"partition"`) would otherwise be left out silently, and the variable made
/// differently from what was asked.
fn only_keys(what: &str, v: &Value, keys: &[&str]) -> Result<()> {
    let Some(o) = v.as_object() else {
        return Ok(());
    };
    match o.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(bad(
            what,
            format!(
                "unknown key {k:?} (the keys are {})",
                keys.iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => Ok(()),
    }
}

pub fn parse_model(text: &str) -> Result<VariableStore> {
    let v = parse("MODEL.json", text)?;
    only_keys("MODEL.json", &v, &["variables"])?;
    let vars = v
        .get("variables")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            bad(
                "MODEL.json",
                "expected an object with a \"variables\" array".into(),
            )
        })?;
    let mut store = VariableStore::new();
    for (i, var) in vars.iter().enumerate() {
        let at = |field: &str| format!("MODEL.json variables[{i}]{field}");
        let name = var
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&at(""), "missing string \"name\"".into()))?;
        let at = |field: &str| format!("MODEL.json variable {name:?}{field}");
        only_keys(
            &at(""),
            var,
            &[
                "name",
                "shape",
                "dtype",
                "partitions",
                "device",
                "initializer",
            ],
        )?;
        let dims = |key: &str| -> Result<Option<Vec<u64>>> {
            match var.get(key) {
                None => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|d| {
                        d.as_u64().ok_or_else(|| {
                            bad(
                                &at(&format!(" {key}")),
                                format!("{d} is not a non-negative integer"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(other) => Err(bad(
                    &at(&format!(" {key}")),
                    format!("expected an array of integers, found {other}"),
                )),
            }
        };
        let shape = dims("shape")?.ok_or_else(|| bad(&at(""), "missing \"shape\"".into()))?;
        let dtype_name = var
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&at(""), "missing string \"dtype\"".into()))?;
        let dtype = DType::from_name(dtype_name)
            .ok_or_else(|| bad(&at(" dtype"), unknown_dtype(dtype_name)))?;
        if dtype == DType::Variant {
            // TensorFlow makes no zeros of it, and no .npy or safetensors file holds one.
            return Err(bad(
                &at(" dtype"),
                "\"variant\" is not a dtype a variable of MODEL.json can have".into(),
            ));
        }
        let init = match var.get("initializer") {
            None => Init::Zeros,
            Some(Value::String(s)) if s == "zeros" => Init::Zeros,
            Some(Value::String(s)) if s == "ones" => Init::Ones,
            Some(Value::Object(o))
                if o.len() == 1 && o.get("constant").is_some_and(Value::is_number) =>
            {
                {
                    let c = &o["constant"];
                    // Integers stay exact (an f64 cannot hold every int64).
                    match (c.as_i64(), c.as_u64()) {
                        (Some(i), _) => Init::IntConstant(i.into()),
                        (None, Some(u)) => Init::IntConstant(u.into()),
                        _ => Init::Constant(c.as_f64().unwrap_or(0.0)),
                    }
                }
            }
            Some(other) => {
                return Err(bad(
                    &at(" initializer"),
                    format!(
                        "expected \"zeros\", \"ones\" or {{\"constant\": NUMBER}}, found {other}"
                    ),
                ))
            }
        };
        let partitions = dims("partitions")?;
        match &partitions {
            Some(p) => drop(store.get_partitioned_variable(name, &shape, dtype, p, init)?),
            None => drop(store.get_variable(name, &shape, dtype, init)?),
        }
        let device = |d: &Value| -> Result<Device> {
            d.as_str().and_then(Device::parse).ok_or_else(|| {
                bad(
                    &at(" device"),
                    format!("expected \"cpu\" or \"cuda:N\", found {d}"),
                )
            })
        };
        match var.get("device") {
            None => {}
            Some(Value::Array(a)) if partitions.is_some() => {
                let devices = a.iter().map(device).collect::<Result<Vec<_>>>()?;
                store
                    .set_part_devices(name, &devices)
                    .map_err(|e| match e.kind() {
                        ErrorKind::BadVariable { reason, .. } => {
                            bad(&at(" device"), reason.clone())
                        }
                        _ => e,
                    })?;
            }
            Some(Value::Array(_)) => {
                return Err(bad(
                    &at(" device"),
                    "an array of devices (one per part) is for a partitioned variable".into(),
                ))
            }
            Some(d) => store.set_device(name, device(d)?)?,
        }
    }
    Ok(store)
}

fn parse_target(what: &str, t: &Value) -> Result<Target> {
    match t {
        Value::String(s) => Ok(Target::Name(s.clone())),
        Value::Object(o) if o.len() == 1 && o.get("variable").is_some_and(Value::is_string) => {
            Ok(Target::Variable(o["variable"].as_str().unwrap_or_default().into()))
        }
        Value::Array(a) => a
            .iter()
            .map(|p| p.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .map(Target::Parts)
            .ok_or_else(|| bad(what, format!("a list target holds variable names (strings), found {t}"))),
        other => Err(bad(
            what,
            format!("a target is a name, {{\"variable\": NAME}} or an array of part names; found {other}"),
        )),
    }
}

/// Parses MAP.json text: `{"CHECKPOINT_KEY": TARGET, ...}` or `[["CHECKPOINT_KEY", TARGET], ...]`.
pub fn parse_map(text: &str) -> Result<AssignmentMap> {
    map_from_value(&parse("MAP.json", text)?)
}

/// Parses an already-decoded MAP.json value.
pub fn map_from_value(v: &Value) -> Result<AssignmentMap> {
    let mut map = AssignmentMap::new();
    match v {
        Value::Object(o) => {
            for (k, t) in o {
                map.push(k.clone(), parse_target(&format!("MAP.json key {k:?}"), t)?);
            }
        }
        Value::Array(pairs) => {
            for (i, p) in pairs.iter().enumerate() {
                let what = format!("MAP.json pair {i}");
                match p.as_array().map(Vec::as_slice) {
                    Some([Value::String(k), t]) => {
                        map.push(k.clone(), parse_target(&what, t)?);
                    }
                    _ => {
                        return Err(bad(
                            &what,
                            format!("expected [\"CHECKPOINT_KEY\", TARGET], found {p}"),
                        ))
                    }
                }
            }
        }
        other => {
            return Err(bad(
                "MAP.json",
                format!("expected an object or an array of [key, target] pairs, found {other}"),
            ))
        }
    }
    Ok(map)
}

/// "unknown dtype" for `name`, with the closest dtype names a variable can have where some are a
/// slip away (`flaot32`, `Float32`; every one as close, `int` for `int2`, `int4` and `int8`),
/// and the list of them where none is.
fn unknown_dtype(name: &str) -> String {
    let mut all: Vec<&str> = DType::ALL
        .iter()
        .filter(|&&d| d != DType::Variant)
        .map(|d| d.name())
        .collect();
    all.sort_unstable();
    let lower = name.to_ascii_lowercase();
    let distance = |n: &str| strsim::levenshtein(&lower, n);
    let best = all.iter().map(|n| distance(n)).min().unwrap_or(usize::MAX);
    let close: Vec<String> = all
        .iter()
        .filter(|n| best <= 2 && distance(n) == best)
        .map(|n| format!("{n:?}"))
        .collect();
    match close.as_slice() {
        [] => format!("unknown dtype {name:?}; expected one of {}", all.join(", ")),
        [one] => format!("unknown dtype {name:?}; did you mean {one}?"),
        several => format!(
            "unknown dtype {name:?}; did you mean one of {}?",
            several.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_map() {
        let store = parse_model(
            r#"{"variables": [
              {"name": "new_scope_1/var1", "shape": [20, 2], "dtype": "float32"},
              {"name": "new_scope_2/var3", "shape": [100, 100], "dtype": "float32", "partitions": [5, 1]},
              {"name": "head/bias", "shape": [4], "dtype": "float32", "initializer": {"constant": 0.5}}]}"#,
        )
        .unwrap();
        assert_eq!(store.variables().count(), 7);
        assert_eq!(
            store
                .partitioned_variable("new_scope_2/var3")
                .unwrap()
                .parts
                .len(),
            5
        );
        let m = parse_map(
            r#"[["a/", "b/"], ["x", {"variable": "v"}], ["y", ["p/part_0", "p/part_1"]]]"#,
        )
        .unwrap();
        assert_eq!(m.pairs().len(), 3);
        assert_eq!(m.pairs()[1].1, Target::Variable("v".into()));
        for (text, needle) in [
            ("{", "not valid JSON"),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float33"}]}"#,
                r#"unknown dtype "float33"; did you mean "float32"?"#,
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "Float16"}]}"#,
                r#"unknown dtype "Float16"; did you mean "float16"?"#,
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "int"}]}"#,
                r#"unknown dtype "int"; did you mean one of "int2", "int4", "int8"?"#,
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "FLOAT"}]}"#,
                r#"unknown dtype "FLOAT"; did you mean one of "float16", "float32", "float64"?"#,
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "tensor"}]}"#,
                r#"unknown dtype "tensor"; expected one of bfloat16, bool, complex128, complex64, float16, float32, float64, float8_e4m3b11fnuz, float8_e4m3fn, float8_e4m3fnuz, float8_e5m2, float8_e5m2fnuz, int16, int2, int32, int4, int64, int8, qint16, qint32, qint8, quint16, quint8, string, uint16, uint2, uint32, uint4, uint64, uint8"#,
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [-1], "dtype": "float32"}]}"#,
                "not a non-negative",
            ),
            // Not a variable's dtype: it was accepted and written as a .npy of empty strings.
            (
                r#"{"variables": [{"name": "a", "shape": [2], "dtype": "variant"}]}"#,
                "MODEL.json variable \"a\" dtype: \"variant\" is not a dtype a variable of MODEL.json can have",
            ),
            (
                r#"{"variables": [{"name": "a", "dtype": "float32"}]}"#,
                "missing \"shape\"",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "int32", "initializer": {"constant": 0.5}}]}"#,
                "initializer 0.5 is not an int32 value",
            ),
            // A misspelt key would leave the variable made otherwise than asked (zeros for
            // the constant, one piece for the parts): an error naming the keys.
            (
                r#"{"variables": [{"name": "a", "shape": [2], "dtype": "float32", "initialiser": {"constant": 5}}]}"#,
                "MODEL.json variable \"a\": unknown key \"initialiser\" (the keys are \"name\", \"shape\", \"dtype\", \"partitions\", \"device\", \"initializer\")",
            ),
            (
                r#"{"variables": [{"name": "e", "shape": [4, 2], "dtype": "float32", "partition": [2, 1]}]}"#,
                "unknown key \"partition\"",
            ),
            (
                r#"{"variables": [], "varaibles": [{"name": "a", "shape": [1], "dtype": "float32"}]}"#,
                "MODEL.json: unknown key \"varaibles\" (the keys are \"variables\")",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "int64", "initializer": {"constant": 4e18}}]}"#,
                "initializer 4000000000000000000 is a floating-point number past 2^53",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "int64", "initializer": {"constant": 9223372036854775808}}]}"#,
                "initializer 9223372036854775808 is not an int64 value (it must be an integer from -9223372036854775808 to 9223372036854775807)",
            ),
        ] {
            let e = parse_model(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        assert!(parse_map("[1]").unwrap_err().to_string().contains("pair 0"));
        // A key twice in one object would drop one silently: an error, at any depth.
        let e = parse_map(r#"{"t": "a", "t": "b"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the key \"t\" appears twice") && e.contains("array of [key, target] pairs"),
            "{e}"
        );
        let e = parse_model(
            r#"{"variables": [{"name": "a", "name": "b", "shape": [1], "dtype": "float32"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("the key \"name\" appears twice"), "{e}");
        // The same key in two objects is no repeat; numbers keep their kind.
        let m = parse_map(r#"{"a": {"variable": "x"}, "b": {"variable": "y"}}"#).unwrap();
        assert_eq!(m.pairs().len(), 2);
        let store = parse_model(
            r#"{"variables": [{"name": "i", "shape": [1], "dtype": "int64", "initializer": {"constant": -9223372036854775808}},
                              {"name": "f", "shape": [1], "dtype": "float64", "initializer": {"constant": 0.1}}]}"#,
        )
        .unwrap();
        assert_eq!(store.variables().count(), 2);
        // Placement: one device, one per part, and the mistakes.
        let store = parse_model(
            r#"{"variables": [
              {"name": "a", "shape": [2], "dtype": "float32", "device": "cuda:1"},
              {"name": "p", "shape": [6, 2], "dtype": "float32", "partitions": [3, 1],
               "device": ["cpu", "cuda:0", "cuda:2"]},
              {"name": "q", "shape": [6, 2], "dtype": "float32", "partitions": [2, 1], "device": "cuda:3"}]}"#,
        )
        .unwrap();
        assert_eq!(store.device_of("a", Device::Cpu), Device::Cuda(1));
        assert_eq!(store.device_of("p/part_0", Device::Cuda(5)), Device::Cpu);
        assert_eq!(store.device_of("p/part_2", Device::Cpu), Device::Cuda(2));
        assert_eq!(store.device_of("q/part_1", Device::Cpu), Device::Cuda(3));
        for (text, needle) in [
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "device": "gpu0"}]}"#,
                "variable \"a\" device: expected \"cpu\" or \"cuda:N\", found \"gpu0\"",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "device": "cuda:+1"}]}"#,
                "variable \"a\" device: expected \"cpu\" or \"cuda:N\", found \"cuda:+1\"",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "device": ["cpu"]}]}"#,
                "for a partitioned variable",
            ),
            (
                r#"{"variables": [{"name": "p", "shape": [4], "dtype": "float32", "partitions": [2],
                   "device": ["cpu", "cuda:0", "cuda:1"]}]}"#,
                "variable \"p\" device: it has 2 parts, so it takes 2 devices, one per part; 3 were given",
            ),
        ] {
            let e = parse_model(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        assert!(parse_map(r#"{"a": 3}"#)
            .unwrap_err()
            .to_string()
            .contains("key \"a\""));
    }

    /// Strings with escapes (decoded into serde_json's scratch buffer, not borrowed from the
    /// text) keep their text, and errors quote a wrong value as it was written, booleans
    /// included.
    #[test]
    fn escaped_strings_and_wrong_values_as_written() {
        let store = parse_model(
            r#"{"variables": [{"name": "sc\u00f6pe\/v", "shape": [1], "dtype": "float32",
                               "initializer": "\u006fnes"}]}"#,
        )
        .unwrap();
        let v = store.variables().next().unwrap();
        assert_eq!((v.name.as_str(), &v.init), ("scöpe/v", &Init::Ones));
        let m = parse_map(r#"{"a\/": "b\/", "x": {"variable": "\u0076"}}"#).unwrap();
        assert_eq!(
            m.pairs(),
            [
                ("a/".to_string(), Target::Name("b/".into())),
                ("x".to_string(), Target::Variable("v".into()))
            ]
        );
        for (text, needle) in [
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "initializer": "twos"}]}"#,
                "variable \"a\" initializer: expected \"zeros\", \"ones\" or {\"constant\": NUMBER}, found \"twos\"",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "initializer": true}]}"#,
                "found true",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "initializer": {"constant": "5"}}]}"#,
                "found {\"constant\":\"5\"}",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "initializer": {"constant": 5, "scale": 2}}]}"#,
                "found {\"constant\":5,\"scale\":2}",
            ),
            (
                r#"{"variables": [{"name": "a", "shape": [1], "dtype": "float32", "device": false}]}"#,
                "expected \"cpu\" or \"cuda:N\", found false",
            ),
        ] {
            let e = parse_model(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        // A variable object is exactly {"variable": NAME}.
        for (text, found) in [
            (r#"{"k": {"variable": 3}}"#, r#"{"variable":3}"#),
            (
                r#"{"k": {"variable": "v", "scope": "s/"}}"#,
                r#"{"scope":"s/","variable":"v"}"#,
            ),
            (r#"{"k": {"name": "v"}}"#, r#"{"name":"v"}"#),
            (r#"{"k": true}"#, "true"),
        ] {
            let e = parse_map(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "MAP.json key \"k\": a target is a name, {{\"variable\": NAME}} or an array of part names; found {found}"
                )),
                "{e}"
            );
        }
    }
}
