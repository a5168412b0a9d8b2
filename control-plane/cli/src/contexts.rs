//! ternctl.toml with several control planes, as kubeconfig holds several clusters: the file
//! `tern-control-plane init` writes holds one (the context `default`); `ternctl config
//! set-context NAME --from FILE` adds one, `use-context` picks the current one, `--context`
//! picks one for a single command.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tern_proto::api::CliConfig;

/// The name of the one control plane of a file without contexts.
pub const DEFAULT_CONTEXT: &str = "default";

/// ternctl.toml, in either form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// One control plane.
    Single(CliConfig),
    /// Named control planes and the current one.
    Contexts(Contexts),
}

/// The form with contexts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Contexts {
    pub current_context: String,
    pub contexts: BTreeMap<String, CliConfig>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        let table: toml::Table = toml::from_str(text)?;
        if table.contains_key("contexts") {
            toml::from_str(text).map(ConfigFile::Contexts)
        } else {
            toml::from_str(text).map(ConfigFile::Single)
        }
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "failed to read {} (copy the ternctl.toml written by `tern-control-plane init`, or pass --config)",
                path.display()
            )
        })?;
        Self::parse(&text).with_context(|| format!("failed to parse {}", path.display()))
    }

    /// Every context, by name.
    pub fn all(&self) -> BTreeMap<&str, &CliConfig> {
        match self {
            ConfigFile::Single(config) => [(DEFAULT_CONTEXT, config)].into(),
            ConfigFile::Contexts(c) => c.contexts.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        }
    }

    pub fn current(&self) -> &str {
        match self {
            ConfigFile::Single(_) => DEFAULT_CONTEXT,
            ConfigFile::Contexts(c) => &c.current_context,
        }
    }

    /// The context named `name`, else the current one.
    pub fn context(&self, name: Option<&str>) -> anyhow::Result<(&str, &CliConfig)> {
        let wanted = name.unwrap_or(self.current());
        let all = self.all();
        match all.get_key_value(wanted) {
            Some((name, config)) => Ok((name, config)),
            None => bail!(
                "no context `{wanted}`; the contexts are: {}",
                all.keys().copied().collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// Adds or replaces the context `name` (a file of one control plane becomes one of
    /// contexts, its control plane the context `default`).
    pub fn set(self, name: &str, config: CliConfig) -> Self {
        let mut contexts = match self {
            ConfigFile::Single(one) => Contexts {
                current_context: DEFAULT_CONTEXT.to_owned(),
                contexts: [(DEFAULT_CONTEXT.to_owned(), one)].into(),
            },
            ConfigFile::Contexts(c) => c,
        };
        contexts.contexts.insert(name.to_owned(), config);
        ConfigFile::Contexts(contexts)
    }

    /// Makes `name` the current context.
    pub fn use_context(self, name: &str) -> anyhow::Result<Self> {
        self.context(Some(name))?;
        Ok(match self {
            single @ ConfigFile::Single(_) => single,
            ConfigFile::Contexts(mut c) => {
                c.current_context = name.to_owned();
                ConfigFile::Contexts(c)
            }
        })
    }

    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(match self {
            ConfigFile::Single(config) => toml::to_string(config)?,
            ConfigFile::Contexts(c) => toml::to_string(c)?,
        })
    }

    /// Writes the file atomically, readable by its owner only (it holds admin tokens).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp-ternctl");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        file.write_all(self.to_toml()?.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("failed to write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(api: &str) -> CliConfig {
        CliConfig {
            api: api.into(),
            admin_token: "t".into(),
            ca_certificate: "pem".into(),
        }
    }

    #[test]
    fn one_control_plane_becomes_the_default_context_and_others_join_it() {
        let single = ConfigFile::Single(config("a:1"));
        let text = single.to_toml().expect("toml");
        assert_eq!(ConfigFile::parse(&text).expect("parses"), single);
        assert_eq!(single.context(None).expect("current").0, "default");

        let two = single.set("staging", config("b:2"));
        let two = ConfigFile::parse(&two.to_toml().expect("toml")).expect("round trip");
        assert_eq!(two.current(), "default");
        assert_eq!(two.context(Some("staging")).expect("there").1.api, "b:2");
        let switched = two.use_context("staging").expect("exists");
        assert_eq!(switched.context(None).expect("current").1.api, "b:2");
        let missing = switched.use_context("prod").unwrap_err().to_string();
        assert!(missing.contains("default, staging"), "{missing}");
    }
}
