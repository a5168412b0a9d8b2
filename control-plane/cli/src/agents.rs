//! Agents' lifecycle and enrollment tokens: `revoke agent`, `delete agent`, `label agent`,
//! `get tokens`, `delete token`.

use anyhow::{Context, bail};
use tern_proto::api::{AgentView, LabelRequest, TokenView};
use tern_transport::https::HttpsClient;

use crate::client::path_segment;
use crate::output::{self, Format};

/// kubectl's label arguments: `k=v` sets, `k-` removes.
pub fn label_changes(args: &[String], overwrite: bool) -> anyhow::Result<LabelRequest> {
    let mut request = LabelRequest {
        overwrite,
        ..LabelRequest::default()
    };
    for arg in args {
        if let Some((key, value)) = arg.split_once('=') {
            request.set.insert(key.to_owned(), value.to_owned());
        } else if let Some(key) = arg.strip_suffix('-').filter(|k| !k.is_empty()) {
            request.remove.push(key.to_owned());
        } else {
            bail!("`{arg}`: expected KEY=VALUE to set a label or KEY- to remove one");
        }
    }
    if request.set.is_empty() && request.remove.is_empty() {
        bail!("no label changes given (KEY=VALUE or KEY-)");
    }
    tern_proto::labels::validate(&request.set)?;
    if let Some(key) = request.remove.iter().find(|k| request.set.contains_key(*k)) {
        bail!("label `{key}` is both set and removed");
    }
    Ok(request)
}

fn agent_path(name: &str) -> String {
    format!("/v1/agents/{}", path_segment(name))
}

/// Prints `agent/NAME VERB`, or the agent in `format`.
fn report(agent: &AgentView, verb: &str, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Name => format!("agent/{}\n", agent.name),
        table if table.is_table() => format!("agent/{} {verb}\n", agent.name),
        other => output::structured_any(agent, other)?,
    })
}

pub async fn revoke(api: &HttpsClient, name: &str, format: Format) -> anyhow::Result<String> {
    let agent: AgentView = api
        .post(&format!("{}/revoke", agent_path(name)), &())
        .await
        .with_context(|| format!("failed to revoke agent `{name}`"))?;
    report(&agent, "revoked", format)
}

pub async fn delete(api: &HttpsClient, name: &str, format: Format) -> anyhow::Result<String> {
    let agent: AgentView = api
        .send_json(hyper::Method::DELETE, &agent_path(name), &())
        .await
        .with_context(|| format!("failed to delete agent `{name}`"))?;
    report(&agent, "deleted", format)
}

pub async fn label(
    api: &HttpsClient,
    name: &str,
    changes: &[String],
    overwrite: bool,
    format: Format,
) -> anyhow::Result<String> {
    let request = label_changes(changes, overwrite)?;
    let agent: AgentView = api
        .post(&format!("{}/labels", agent_path(name)), &request)
        .await
        .with_context(|| format!("failed to label agent `{name}`"))?;
    report(&agent, "labeled", format)
}

pub async fn withdraw_token(api: &HttpsClient, id: &str, format: Format) -> anyhow::Result<String> {
    let token: TokenView = api
        .send_json(
            hyper::Method::DELETE,
            &format!("/v1/tokens/{}", path_segment(id)),
            &(),
        )
        .await
        .with_context(|| format!("failed to delete token `{id}`"))?;
    Ok(match format {
        Format::Name => format!("token/{}\n", token.id),
        table if table.is_table() => format!("token/{} deleted\n", token.id),
        other => output::structured_any(&token, other)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reads_kubectl_label_syntax() {
        let request =
            label_changes(&args(&["site=b", "tier-", "zone=eu-1"]), false).expect("valid");
        assert_eq!(request.set.get("site").map(String::as_str), Some("b"));
        assert_eq!(request.set.get("zone").map(String::as_str), Some("eu-1"));
        assert_eq!(request.remove, ["tier"]);
        assert!(label_changes(&args(&["site"]), false).is_err());
        assert!(label_changes(&args(&["-"]), false).is_err());
        assert!(label_changes(&args(&[]), false).is_err());
        assert!(label_changes(&args(&["a=1", "a-"]), false).is_err());
        assert!(label_changes(&args(&["bad key=1"]), false).is_err());
    }
}
