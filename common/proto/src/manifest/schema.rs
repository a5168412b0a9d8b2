//! The JSON Schema (draft-07) of each manifest kind, generated from the very types that parse
//! manifests, so that it cannot drift from them. The repository publishes them in `schemas/`
//! for editors (`# yaml-language-server: $schema=...`) and CI linters; `ternctl explain` walks
//! them.

use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::{Deployment, Pipeline, Resource};

/// The kinds a manifest may hold, as `kind:` spells them.
pub const KINDS: [&str; 2] = ["Pipeline", "Deployment"];

/// The schema of one kind (`Pipeline` or `Deployment`, as `kind:` spells it).
pub fn for_kind(kind: &str) -> Option<Value> {
    let generator = SchemaSettings::draft07().into_generator();
    let schema = match kind {
        "Pipeline" => generator.into_root_schema_for::<Pipeline>(),
        "Deployment" => generator.into_root_schema_for::<Deployment>(),
        _ => return None,
    };
    Some(schema.to_value())
}

/// The schema of a manifest file's documents: any kind.
pub fn any_kind() -> Value {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Resource>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "description".into(),
            "A Tern manifest document: a Pipeline or a Deployment.".into(),
        );
    }
    schema
}

/// Each published file (its name under `schemas/`) and what it holds, as written: pretty
/// JSON and a final newline.
pub fn files() -> Vec<(String, String)> {
    let pretty = |value: &Value| {
        let mut text = serde_json::to_string_pretty(value).expect("schemas serialize");
        text.push('\n');
        text
    };
    let mut files: Vec<(String, String)> = KINDS
        .iter()
        .filter_map(|kind| {
            let schema = for_kind(kind)?;
            Some((
                format!("{}.json", kind.to_ascii_lowercase()),
                pretty(&schema),
            ))
        })
        .collect();
    files.push(("manifest.json".into(), pretty(&any_kind())));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/` of the repository: found from where cargo runs the test, since a build is
    /// shared between checkouts at different paths (where it was built comes last).
    fn published() -> std::path::PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
            .join("../../schemas")
    }

    /// The files in `schemas/` are what the types generate; with `TERN_WRITE_SCHEMAS=1`
    /// (`cargo xtask schemas`) this writes them instead.
    #[test]
    fn the_published_schemas_are_current() {
        let dir = published();
        let write = std::env::var_os("TERN_WRITE_SCHEMAS").is_some_and(|v| v == "1");
        for (name, text) in files() {
            let path = dir.join(&name);
            if write {
                std::fs::create_dir_all(&dir).expect("create schemas/");
                std::fs::write(&path, &text).expect("write a schema");
                continue;
            }
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                current == text,
                "schemas/{name} is not what the manifest types generate; run `cargo xtask schemas`"
            );
        }
    }

    #[test]
    fn schemas_carry_the_rules_an_editor_can_check() {
        let deployment = for_kind("Deployment").expect("a kind");
        assert_eq!(
            deployment["$schema"],
            "http://json-schema.org/draft-07/schema#"
        );
        assert_eq!(deployment["properties"]["kind"]["const"], "Deployment");
        assert_eq!(
            deployment["properties"]["apiVersion"]["const"],
            super::super::API_VERSION
        );
        assert_eq!(deployment["additionalProperties"], false);
        let metadata = &deployment["definitions"]["Metadata"];
        assert_eq!(metadata["properties"]["name"]["maxLength"], 63);
        assert!(
            metadata["properties"]["name"]["pattern"]
                .as_str()
                .is_some_and(|p| p.starts_with("^[a-z0-9]"))
        );
        let rollout = &deployment["definitions"]["RolloutSpec"];
        assert_eq!(rollout["properties"]["maxErrorRate"]["maximum"], 1.0);
        let strategy =
            serde_json::to_string(&deployment["definitions"]["RolloutStrategy"]).expect("json");
        assert!(
            strategy.contains("all-at-once") && strategy.contains("canary"),
            "{strategy}"
        );
        let pipeline = for_kind("Pipeline").expect("a kind");
        assert_eq!(
            pipeline["required"],
            serde_json::json!(["apiVersion", "kind", "metadata", "spec"])
        );
        assert!(for_kind("Service").is_none());
        assert_eq!(any_kind()["anyOf"].as_array().map(Vec::len), Some(2));
    }
}
