//! `ternctl explain KIND[.field...]`: the documentation of a manifest kind and its fields, as
//! `kubectl explain` shows it, read from the kind's JSON Schema (the one `schemas/` publishes,
//! generated from the types that parse manifests).

use serde_json::{Map, Value};
use tern_proto::manifest::{API_VERSION, schema};

use crate::resources::Kind;

/// The argument: a kind (any of its names) and a path of fields below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `Pipeline` or `Deployment`, as `kind:` spells it.
    pub kind: &'static str,
    pub fields: Vec<String>,
}

impl Target {
    /// `deployment.spec.rollout`, `pl`, `Pipeline.spec.steps.limits`; an unknown kind or one
    /// that has no manifest is an error listing the valid ones.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('.');
        let kind_text = parts.next().unwrap_or_default();
        let choices = "pipelines (pl), deployments (deploy, dep)";
        let kind = match Kind::parse(kind_text) {
            Ok(Kind::Pipeline) => "Pipeline",
            Ok(Kind::Deployment) => "Deployment",
            Ok(other) => {
                return Err(format!(
                    "{} are not written in manifests; explain covers {choices}",
                    other.names().1
                ));
            }
            Err(_) => {
                return Err(format!(
                    "unknown manifest kind `{kind_text}`; valid kinds: {choices}"
                ));
            }
        };
        let fields: Vec<String> = parts.map(str::to_owned).collect();
        if fields.iter().any(String::is_empty) {
            return Err(format!("`{text}` has an empty field name"));
        }
        Ok(Self { kind, fields })
    }
}

/// A schema with its `$ref` followed, `Option`'s `null` alternative dropped and a single
/// `allOf` unwrapped. Several real alternatives (an enumeration's values, the selector's two
/// forms) stay as they are.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let Some(found) = reference
                .strip_prefix('#')
                .and_then(|pointer| root.pointer(pointer))
            else {
                return schema;
            };
            schema = found;
            continue;
        }
        let alternatives = ["allOf", "anyOf", "oneOf"]
            .iter()
            .find_map(|k| schema.get(*k))
            .and_then(Value::as_array);
        if let Some(list) = alternatives {
            let real: Vec<&Value> = list
                .iter()
                .filter(|s| s.get("type") != Some(&Value::from("null")))
                .collect();
            if let [only] = real.as_slice() {
                schema = only;
                continue;
            }
        }
        return schema;
    }
    schema
}

/// The name of the definition a schema refers to, directly or through an `allOf`/`anyOf`.
fn reference(schema: &Value) -> Option<&str> {
    let direct = schema.get("$ref").and_then(Value::as_str);
    let nested = || {
        ["allOf", "anyOf"]
            .iter()
            .filter_map(|k| schema.get(*k).and_then(Value::as_array))
            .flatten()
            .find_map(|s| s.get("$ref").and_then(Value::as_str))
    };
    direct.or_else(nested).and_then(|r| r.rsplit('/').next())
}

/// The object a field holds: its schema resolved, or its items' for a list (as kubectl walks
/// into arrays).
fn object<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let schema = resolve(root, schema);
    match schema.get("items") {
        Some(items) => resolve(root, items),
        None => schema,
    }
}

/// The properties of the object a field holds (the selector: its full form's).
fn properties<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a Map<String, Value>> {
    let object = object(root, schema);
    object
        .get("properties")
        .or_else(|| {
            object
                .get("anyOf")
                .and_then(|a| a.get(0))
                .and_then(|s| s.get("properties"))
        })
        .and_then(Value::as_object)
}

/// `<string>`, `<integer>`, `<[]StepSpec>`, `<map[string]string>`, `<Object>`, ...
fn type_name(root: &Value, schema: &Value) -> String {
    let reference = reference(schema);
    let resolved = resolve(root, schema);
    let types: Vec<&str> = match resolved.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let main = types.iter().copied().find(|t| *t != "null");
    match main {
        Some("array") => {
            let items = resolved.get("items").unwrap_or(&Value::Null);
            format!("[]{}", type_name(root, items))
        }
        Some("object") if resolved.get("properties").is_none() => {
            match resolved.get("additionalProperties") {
                Some(inner) if inner.is_object() => {
                    format!("map[string]{}", type_name(root, inner))
                }
                _ => "Object".to_owned(),
            }
        }
        Some("object") => reference.unwrap_or("Object").to_owned(),
        Some(t) => t.to_owned(),
        None if resolved.get("enum").is_some() || resolved.get("oneOf").is_some() => {
            "string".to_owned()
        }
        None => reference.unwrap_or("Object").to_owned(),
    }
}

/// The description of a schema, falling back on its referenced definition's.
fn description(root: &Value, schema: &Value) -> String {
    schema
        .get("description")
        .or_else(|| resolve(root, schema).get("description"))
        .and_then(Value::as_str)
        .unwrap_or("<no description>")
        .to_owned()
}

/// The values an enumeration takes (`all-at-once`, `canary`).
fn enum_values(root: &Value, schema: &Value) -> Vec<String> {
    let resolved = resolve(root, schema);
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
    }
    resolved
        .get("oneOf")
        .and_then(Value::as_array)
        .map(|alternatives| {
            alternatives
                .iter()
                .filter_map(|a| {
                    a.get("const")
                        .or_else(|| a.get("enum").and_then(|e| e.get(0)))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Wraps `text` at 76 columns, each line indented by `indent`.
fn wrapped(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    // Doc comments keep their line breaks; a blank line is what parts paragraphs.
    for paragraph in text.split("\n\n") {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && indent + line.len() + 1 + word.len() > 80 {
                out.push_str(&format!("{pad}{line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(&format!("{pad}{line}\n"));
    }
    out
}

/// One line per field (`name <type> -required-`), then its description, as kubectl lists
/// FIELDS; with `recursive`, every field below too, indented, without descriptions.
fn fields(root: &Value, schema: &Value, recursive: bool, indent: usize, out: &mut String) {
    let Some(properties) = properties(root, schema) else {
        return;
    };
    let required: Vec<&str> = object(root, schema)
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let pad = " ".repeat(indent);
    for (name, field) in properties {
        let marker = if required.contains(&name.as_str()) {
            " -required-"
        } else {
            ""
        };
        out.push_str(&format!(
            "{pad}{name}\t<{}>{marker}\n",
            type_name(root, field)
        ));
        if recursive {
            if indent < 24 {
                fields(root, field, true, indent + 2, out);
            }
        } else {
            out.push_str(&wrapped(&description(root, field), indent + 2));
            out.push('\n');
        }
    }
}

/// The schema of the field `target` names (the kind's own for none), or which fields there
/// are where a name does not match.
fn walk<'a>(root: &'a Value, target: &Target) -> Result<&'a Value, String> {
    let mut schema = root;
    for (depth, field) in target.fields.iter().enumerate() {
        let properties = properties(root, schema);
        let Some(found) = properties.and_then(|p| p.get(field)) else {
            let known: Vec<&str> = properties
                .map(|p| p.keys().map(String::as_str).collect())
                .unwrap_or_default();
            let at = std::iter::once(target.kind)
                .chain(target.fields[..depth].iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(".");
            return Err(if known.is_empty() {
                format!("field `{field}` does not exist: {at} has no fields")
            } else {
                format!(
                    "field `{field}` does not exist in {at}; its fields: {}",
                    known.join(", ")
                )
            });
        };
        schema = found;
    }
    Ok(schema)
}

fn kind_schema(target: &Target) -> Result<Value, String> {
    schema::for_kind(target.kind).ok_or_else(|| format!("no schema for kind {}", target.kind))
}

/// What `explain` prints for `target`: the kind, the field's type and description, its
/// values or default where it has them, and its fields.
pub fn explain(target: &Target, recursive: bool) -> Result<String, String> {
    let root = kind_schema(target)?;
    let schema = walk(&root, target)?;
    let mut out = format!("KIND:       {}\nVERSION:    {API_VERSION}\n\n", target.kind);
    if let Some(last) = target.fields.last() {
        out.push_str(&format!("FIELD: {last} <{}>\n\n", type_name(&root, schema)));
    }
    out.push_str("DESCRIPTION:\n");
    out.push_str(&wrapped(&description(&root, schema), 4));
    let values = enum_values(&root, schema);
    if !values.is_empty() {
        out.push_str(&format!("\n    Possible values: {}\n", values.join(", ")));
    }
    if let Some(default) = schema.get("default") {
        out.push_str(&format!("\n    Default: {default}\n"));
    }
    if properties(&root, schema).is_some() {
        out.push_str("\nFIELDS:\n");
        fields(&root, schema, recursive, 2, &mut out);
    }
    Ok(out)
}

/// The JSON Schema of `target` (`-o json`): the kind's whole schema, or the field's with
/// its references followed.
pub fn schema_of(target: &Target) -> Result<Value, String> {
    let root = kind_schema(target)?;
    if target.fields.is_empty() {
        return Ok(root);
    }
    let schema = walk(&root, target)?;
    Ok(resolve(&root, schema).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explained(text: &str) -> String {
        let target = Target::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        explain(&target, false).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_kind_lists_its_fields_with_types_and_descriptions() {
        let out = explained("deployment");
        assert!(
            out.starts_with("KIND:       Deployment\nVERSION:    tern.dev/v1alpha1"),
            "{out}"
        );
        assert!(out.contains("spec\t<DeploymentSpec> -required-"), "{out}");
        assert!(out.contains("metadata\t<Metadata> -required-"), "{out}");
        assert!(out.contains("which agents run a pipeline"), "{out}");
    }

    #[test]
    fn fields_are_reached_through_objects_lists_and_options() {
        let out = explained("deploy.spec.rollout.strategy");
        assert!(out.contains("FIELD: strategy <string>"), "{out}");
        assert!(
            out.contains("Possible values: all-at-once, canary"),
            "{out}"
        );
        let out = explained("pl.spec.steps");
        assert!(out.contains("FIELD: steps <[]StepSpec>"), "{out}");
        assert!(out.contains("limits\t<StepLimitsSpec>"), "{out}");
        let out = explained("pipeline.spec.steps.limits.timeoutMs");
        assert!(out.contains("FIELD: timeoutMs <integer>"), "{out}");
        assert!(out.contains("cut off"), "{out}");
        let out = explained("deployment.metadata.labels");
        assert!(out.contains("<map[string]string>"), "{out}");
        let out = explained("deployment.spec.selector");
        assert!(
            out.contains("matchExpressions\t<[]MatchExpression>"),
            "{out}"
        );
        let out = explained("deployment.spec.selector.matchExpressions.operator");
        assert!(out.contains("In, NotIn, Exists, DoesNotExist"), "{out}");
        let out = explained("deployment.spec.rollout.maxErrorRate");
        assert!(out.contains("Default: 0.02"), "{out}");
    }

    #[test]
    fn recursive_shows_the_whole_tree() {
        let target = Target::parse("pipeline.spec").expect("target");
        let out = explain(&target, true).expect("explained");
        assert!(
            out.contains("  steps\t<[]StepSpec> -required-\n    config\t"),
            "{out}"
        );
        assert!(out.contains("\n    name\t<string> -required-\n"), "{out}");
        assert!(out.contains("      timeoutMs\t<integer>"), "{out}");
    }

    #[test]
    fn unknown_kinds_and_fields_list_the_valid_ones() {
        let e = Target::parse("pods").expect_err("unknown");
        assert!(
            e.contains("pipelines (pl), deployments (deploy, dep)"),
            "{e}"
        );
        let e = Target::parse("agents.spec").expect_err("no manifest");
        assert!(e.contains("agents are not written in manifests"), "{e}");
        let target = Target::parse("deployment.spec.rolout").expect("parses");
        let e = explain(&target, false).expect_err("no such field");
        assert!(
            e.contains("`rolout`") && e.contains("rollout") && e.contains("variants"),
            "{e}"
        );
        let schema = schema_of(&Target::parse("deployment.spec.rollout").expect("t")).expect("s");
        assert!(schema["properties"]["waves"].is_object(), "{schema}");
    }
}
