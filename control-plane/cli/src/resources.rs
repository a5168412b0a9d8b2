//! The kinds `get`, `describe` and `delete` take, with kubectl's habits: singular, plural and
//! short names (`agent`, `agents`, `ag`; `kind/name` too), `-l` label selectors, `-o
//! wide|name|json|yaml|jsonpath=...`, and `--watch`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_proto::api::{
    AgentView, AlertView, BaselineView, DeploymentView, PipelineView, ReleaseView, ReplicaView,
    TokenView,
};
use tern_proto::labels::Selector;
use tern_transport::https::HttpsClient;

use crate::output::{self, Format};

/// A kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Agent,
    Pipeline,
    Deployment,
    Release,
    Alert,
    Baseline,
    Token,
    Replica,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Agent,
        Kind::Pipeline,
        Kind::Deployment,
        Kind::Release,
        Kind::Alert,
        Kind::Baseline,
        Kind::Token,
        Kind::Replica,
    ];

    /// Singular, plural, short names.
    pub fn names(self) -> (&'static str, &'static str, &'static [&'static str]) {
        match self {
            Kind::Agent => ("agent", "agents", &["ag"]),
            Kind::Pipeline => ("pipeline", "pipelines", &["pl"]),
            Kind::Deployment => ("deployment", "deployments", &["deploy", "dep"]),
            Kind::Release => ("release", "releases", &["rel"]),
            Kind::Alert => ("alert", "alerts", &[]),
            Kind::Baseline => ("baseline", "baselines", &["bl"]),
            Kind::Token => ("token", "tokens", &["tok"]),
            Kind::Replica => ("replica", "replicas", &["rep"]),
        }
    }

    pub fn singular(self) -> &'static str {
        self.names().0
    }

    /// The kinds and their names, for messages and help.
    pub fn choices() -> String {
        Self::ALL
            .iter()
            .map(|k| {
                let (_, plural, short) = k.names();
                match short {
                    [] => plural.to_owned(),
                    short => format!("{plural} ({})", short.join(", ")),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The kind named `text` (any of its names, any case).
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|k| {
                let (one, many, short) = k.names();
                lower == one || lower == many || short.contains(&lower.as_str())
            })
            .ok_or_else(|| {
                format!(
                    "unknown resource kind `{text}`; valid kinds: {}",
                    Self::choices()
                )
            })
    }
}

/// `KIND` or `KIND/NAME`, as `get` and `describe` take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindArg {
    pub kind: Kind,
    pub name: Option<String>,
}

impl KindArg {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((kind, name)) if !name.is_empty() => Ok(KindArg {
                kind: Kind::parse(kind)?,
                name: Some(name.to_owned()),
            }),
            Some(_) => Err(format!("`{text}` names no resource after the `/`")),
            None => Ok(KindArg {
                kind: Kind::parse(text)?,
                name: None,
            }),
        }
    }
}

/// `-l`'s value.
pub fn parse_selector(text: &str) -> Result<Selector, String> {
    Selector::parse(text).map_err(|e| e.to_string())
}

/// A resource as the admin API lists it.
pub trait Resource: Serialize + DeserializeOwned {
    const KIND: Kind;
    /// Where the admin API lists them.
    const PATH: &'static str;
    /// Its name, as `get KIND NAME` takes it.
    fn name(&self) -> String;
    /// Its labels, for `-l`; kinds without labels have none.
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        None
    }
    /// The table (`-o table|wide`) of a list.
    fn table(list: &[Self], format: Format) -> anyhow::Result<String>;
}

impl Resource for AgentView {
    const KIND: Kind = Kind::Agent;
    const PATH: &'static str = "/v1/agents";
    fn name(&self) -> String {
        self.name.clone()
    }
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.labels)
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        output::agents(list, format)
    }
}

impl Resource for PipelineView {
    const KIND: Kind = Kind::Pipeline;
    const PATH: &'static str = "/v1/pipelines";
    fn name(&self) -> String {
        self.name.clone()
    }
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.labels)
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        output::pipelines(list, format)
    }
}

impl Resource for DeploymentView {
    const KIND: Kind = Kind::Deployment;
    const PATH: &'static str = "/v1/deployments";
    fn name(&self) -> String {
        self.name.clone()
    }
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.labels)
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        output::deployments(list, format)
    }
}

impl Resource for ReleaseView {
    const KIND: Kind = Kind::Release;
    const PATH: &'static str = "/v1/releases";
    fn name(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        output::releases(list, format)
    }
}

impl Resource for AlertView {
    const KIND: Kind = Kind::Alert;
    const PATH: &'static str = "/v1/alerts";
    fn name(&self) -> String {
        format!("{}.{}.{}", self.pipeline, self.scope, self.feature)
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        crate::drift::alerts(list, format)
    }
}

impl Resource for BaselineView {
    const KIND: Kind = Kind::Baseline;
    const PATH: &'static str = "/v1/baselines";
    fn name(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        crate::drift::baselines(list, format)
    }
}

impl Resource for TokenView {
    const KIND: Kind = Kind::Token;
    const PATH: &'static str = "/v1/tokens";
    fn name(&self) -> String {
        self.id.clone()
    }
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.labels)
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        output::tokens(list, format)
    }
}

impl Resource for ReplicaView {
    const KIND: Kind = Kind::Replica;
    const PATH: &'static str = "/v1/replicas";
    fn name(&self) -> String {
        self.name.clone()
    }
    fn table(list: &[Self], format: Format) -> anyhow::Result<String> {
        output::replicas(list, format)
    }
}

/// What `get` was asked for.
#[derive(Debug, Clone)]
pub struct Query {
    pub names: Vec<String>,
    pub selector: Selector,
    pub format: Format,
}

/// The resources of the list that `query` selects; a name that is not there is an error.
pub fn select<T: Resource>(list: Vec<T>, query: &Query) -> anyhow::Result<Vec<T>> {
    let wanted: BTreeSet<&str> = query.names.iter().map(String::as_str).collect();
    let empty = BTreeMap::new();
    let chosen: Vec<T> = list
        .into_iter()
        .filter(|r| wanted.is_empty() || wanted.contains(r.name().as_str()))
        .filter(|r| query.selector.matches(r.labels().unwrap_or(&empty)))
        .collect();
    for name in &wanted {
        if !chosen.iter().any(|r| r.name() == *name) {
            anyhow::bail!("{} `{name}` not found", T::KIND.singular());
        }
    }
    Ok(chosen)
}

/// The selected resources in the asked format: one resource as itself (JSON, YAML, JSONPath)
/// when one was named, else the list.
pub fn render<T: Resource>(chosen: &[T], query: &Query) -> anyhow::Result<String> {
    match query.format {
        Format::Name => Ok(chosen
            .iter()
            .map(|r| format!("{}/{}\n", T::KIND.singular(), r.name()))
            .collect()),
        Format::Table | Format::Wide => T::table(chosen, query.format),
        structured => match chosen {
            [one] if query.names.len() == 1 => output::structured_any(one, structured),
            list => output::structured_any(list, structured),
        },
    }
}

async fn fetch<T: Resource>(api: &HttpsClient) -> anyhow::Result<Vec<T>> {
    let (_, plural, _) = T::KIND.names();
    api.get(T::PATH)
        .await
        .with_context(|| format!("failed to list {plural}"))
}

/// How often `--watch` asks again.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// `get`: prints once, or with `watch` prints again what changed until interrupted (tables:
/// the rows not shown before; other formats: the whole answer when it changed).
pub async fn get<T: Resource>(api: &HttpsClient, query: &Query, watch: bool) -> anyhow::Result<()> {
    let mut shown_rows: BTreeSet<String> = BTreeSet::new();
    let mut last = String::new();
    loop {
        let text = render(&select(fetch::<T>(api).await?, query)?, query)?;
        if !watch {
            print!("{text}");
            return Ok(());
        }
        if query.format.is_table() {
            // The rows not shown before (the header only the first time).
            for line in text.lines() {
                if shown_rows.insert(line.to_owned()) {
                    println!("{line}");
                }
            }
        } else if text != last {
            print!("{text}");
        }
        last = text;
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// `get KIND`, for every kind.
pub async fn get_kind(
    api: &HttpsClient,
    kind: Kind,
    query: &Query,
    watch: bool,
) -> anyhow::Result<()> {
    match kind {
        Kind::Agent => get::<AgentView>(api, query, watch).await,
        Kind::Pipeline => get::<PipelineView>(api, query, watch).await,
        Kind::Deployment => get::<DeploymentView>(api, query, watch).await,
        Kind::Release => get::<ReleaseView>(api, query, watch).await,
        Kind::Alert => get::<AlertView>(api, query, watch).await,
        Kind::Baseline => get::<BaselineView>(api, query, watch).await,
        Kind::Token => get::<TokenView>(api, query, watch).await,
        Kind::Replica => get::<ReplicaView>(api, query, watch).await,
    }
}

/// One resource by name.
async fn one<T: Resource>(api: &HttpsClient, name: &str) -> anyhow::Result<T> {
    let query = Query {
        names: vec![name.to_owned()],
        selector: Selector::default(),
        format: Format::Json,
    };
    select(fetch::<T>(api).await?, &query)?
        .pop()
        .with_context(|| format!("{} `{name}` not found", T::KIND.singular()))
}

/// `describe KIND NAME`: a kind's own description where it has one, else every field of the
/// resource, indented.
pub async fn describe(
    api: &HttpsClient,
    kind: Kind,
    name: &str,
    format: Format,
) -> anyhow::Result<String> {
    // Agents and deployments have an endpoint of their own (whose 404 names what is missing).
    let direct = |path: &str| format!("{path}/{}", crate::client::path_segment(name));
    match kind {
        Kind::Agent => {
            let agent: AgentView = api
                .get(&direct(AgentView::PATH))
                .await
                .with_context(|| format!("failed to describe agent `{name}`"))?;
            output::agent(&agent, format)
        }
        Kind::Deployment => {
            let deployment: DeploymentView = api
                .get(&direct(DeploymentView::PATH))
                .await
                .with_context(|| format!("failed to describe deployment `{name}`"))?;
            output::deployment(&deployment, format)
        }
        Kind::Pipeline => described(&one::<PipelineView>(api, name).await?, kind, format),
        Kind::Release => described(&one::<ReleaseView>(api, name).await?, kind, format),
        Kind::Alert => described(&one::<AlertView>(api, name).await?, kind, format),
        Kind::Baseline => described(&one::<BaselineView>(api, name).await?, kind, format),
        Kind::Token => described(&one::<TokenView>(api, name).await?, kind, format),
        Kind::Replica => described(&one::<ReplicaView>(api, name).await?, kind, format),
    }
}

fn described<T: Resource>(resource: &T, kind: Kind, format: Format) -> anyhow::Result<String> {
    if !format.is_table() {
        return output::structured_any(resource, format);
    }
    let mut out = format!("Kind:  {}\n", kind.singular());
    output::describe_value(&serde_json::to_value(resource)?, 0, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_answer_to_kubectl_style_names() {
        for (text, kind) in [
            ("agents", Kind::Agent),
            ("agent", Kind::Agent),
            ("ag", Kind::Agent),
            ("Deploy", Kind::Deployment),
            ("pl", Kind::Pipeline),
            ("rel", Kind::Release),
            ("tokens", Kind::Token),
        ] {
            assert_eq!(Kind::parse(text), Ok(kind), "{text}");
        }
        let unknown = Kind::parse("pods").unwrap_err();
        assert!(
            unknown.contains("pods") && unknown.contains("deployments (deploy, dep)"),
            "{unknown}"
        );
        let named = KindArg::parse("agent/edge-1").expect("kind/name");
        assert_eq!(
            (named.kind, named.name.as_deref()),
            (Kind::Agent, Some("edge-1"))
        );
        assert!(KindArg::parse("agent/").is_err());
    }
}
