//! `ternctl config` (contexts) and the pages of `ternctl man`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::args::ConfigCommand;
use crate::client::{self, ConfigFile, Target};
use crate::contexts::Contexts;
use crate::output;

/// `ternctl config ...`.
pub fn run(target: Target<'_>, command: ConfigCommand) -> anyhow::Result<()> {
    let path = client::config_path(target.file)?;
    match command {
        ConfigCommand::GetContexts { output } => {
            let file = ConfigFile::read(&path)?;
            let current = target.context.unwrap_or(file.current());
            if output.is_table() {
                let mut t = output::table(&["CURRENT", "NAME", "CONTROL PLANE"]);
                for (name, config) in file.all() {
                    let mark = if name == current { "*" } else { "" };
                    t.add_row(vec![mark.to_owned(), name.to_owned(), config.api.clone()]);
                }
                println!("{t}");
            } else {
                let rows: Vec<_> = file
                    .all()
                    .into_iter()
                    .map(|(name, config)| {
                        serde_json::json!({
                            "name": name,
                            "controlPlane": config.api,
                            "current": name == current,
                        })
                    })
                    .collect();
                print!("{}", output::structured_any(&rows, output)?);
            }
        }
        ConfigCommand::UseContext { name } => {
            ConfigFile::read(&path)?.use_context(&name)?.write(&path)?;
            println!("Switched to context \"{name}\".");
        }
        ConfigCommand::CurrentContext => {
            let file = ConfigFile::read(&path)?;
            println!("{}", target.context.unwrap_or(file.current()));
        }
        ConfigCommand::SetContext { name, from } => {
            let imported = match ConfigFile::read(&from)? {
                ConfigFile::Single(config) => config,
                other => other.context(None)?.1.clone(),
            };
            let file = if path.exists() {
                ConfigFile::read(&path)?.set(&name, imported)
            } else {
                ConfigFile::Contexts(Contexts {
                    current_context: name.clone(),
                    contexts: [(name.clone(), imported)].into(),
                })
            };
            file.write(&path)?;
            println!("Context \"{name}\" set in {}.", path.display());
        }
    }
    Ok(())
}

/// Writes `ternctl.1` and a page per command (`ternctl-get.1`, `ternctl-rollout-status.1`) into
/// `dir`; gives their paths.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let mut root = crate::args::command();
    root.build();
    let mut written = Vec::new();
    write_pages(&root, "ternctl", dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    command: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    // One page per command, once per process: the leaked names live as long as it does.
    let page = command
        .clone()
        .name(&*Box::leak(name.to_owned().into_boxed_str()));
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut bytes)
        .with_context(|| format!("failed to render the page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, bytes).with_context(|| format!("failed to write {}", path.display()))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
