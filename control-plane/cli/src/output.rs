//! Rendering resources as tables, JSON or YAML.

use comfy_table::{Table, presets};
use serde::Serialize;
use tern_proto::api::{
    AgentTop, AgentView, DeploymentView, ExperimentView, PipelineTop, PipelineView, ReleaseView,
    ReplicaView, TokenView,
};
use tern_proto::trust::SignedTrustRoot;

use crate::jsonpath::Template;

/// `-o table|wide|name|json|yaml|jsonpath=TEMPLATE`, as kubectl takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    /// The table with more columns.
    Wide,
    /// `kind/name`, one per line.
    Name,
    Json,
    Yaml,
    /// A JSONPath template over the JSON (parsed once per process: `ternctl` runs one command).
    JsonPath(&'static Template),
}

/// The formats `-o` takes.
pub const FORMATS: &str = "table, wide, name, json, yaml, jsonpath=TEMPLATE";

impl Format {
    /// Reads `-o`'s value.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(template) = text
            .strip_prefix("jsonpath=")
            .or_else(|| text.strip_prefix("jsonpath:"))
        {
            let template = Template::parse(template).map_err(|e| e.to_string())?;
            return Ok(Format::JsonPath(Box::leak(Box::new(template))));
        }
        match text {
            "table" => Ok(Format::Table),
            "wide" => Ok(Format::Wide),
            "name" => Ok(Format::Name),
            "json" => Ok(Format::Json),
            "yaml" => Ok(Format::Yaml),
            other => Err(format!(
                "unknown output format `{other}`; choose one of {FORMATS}"
            )),
        }
    }

    /// Whether this is a table (`table` or `wide`; `name` falls back to a table where a
    /// command has no names to print).
    pub fn is_table(self) -> bool {
        matches!(self, Format::Table | Format::Wide | Format::Name)
    }
}

pub(crate) fn structured<T: Serialize + ?Sized>(
    value: &T,
    format: Format,
) -> anyhow::Result<Option<String>> {
    Ok(match format {
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(serde_yaml_ng::to_string(value)?),
        Format::JsonPath(template) => {
            let json = serde_json::to_value(value)?;
            // A list is seen as kubectl shows one: `{"kind": "List", "items": [...]}`.
            let json = match json {
                serde_json::Value::Array(items) => {
                    serde_json::json!({ "kind": "List", "items": items })
                }
                single => single,
            };
            Some(template.render(&json))
        }
        Format::Table | Format::Wide | Format::Name => None,
    })
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    t
}

/// `first_seen` as `First Seen`.
fn title(key: &str) -> String {
    key.split(['_', '-'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A JSON value as `describe` shows it: `Key:  value` lines, nested objects and lists of
/// objects indented under their key.
pub(crate) fn describe_value(value: &serde_json::Value, indent: usize, out: &mut String) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    let scalar = |v: &Value| match v {
        Value::String(s) => shown(s),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match v {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{}:\n", title(key)));
                        describe_value(v, indent + 2, out);
                    }
                    Value::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
                        out.push_str(&format!("{pad}{}:\n", title(key)));
                        for item in items {
                            out.push_str(&format!("{pad}  -\n"));
                            describe_value(item, indent + 4, out);
                        }
                    }
                    Value::Array(items) => {
                        let list: Vec<String> = items.iter().map(scalar).collect();
                        let list = if list.is_empty() {
                            "-".to_owned()
                        } else {
                            list.join(", ")
                        };
                        out.push_str(&format!("{pad}{}:  {list}\n", title(key)));
                    }
                    Value::Object(_) => out.push_str(&format!("{pad}{}:  -\n", title(key))),
                    v => out.push_str(&format!("{pad}{}:  {}\n", title(key), scalar(v))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                describe_value(item, indent, out);
            }
        }
        v => out.push_str(&format!("{pad}{}\n", scalar(v))),
    }
}

/// Text that came from an agent, safe for a terminal (no escape sequences).
pub(crate) fn shown(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// Labels as `k=v,k2=v2`, `-` when there are none.
fn label_list(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "-".into()
    } else {
        tern_proto::labels::format(labels)
    }
}

/// Annotations one per line under their heading, as `kubectl describe` shows them.
fn annotation_lines(annotations: &std::collections::BTreeMap<String, String>) -> String {
    if annotations.is_empty() {
        return "-\n".into();
    }
    let mut lines = String::new();
    for (i, (key, value)) in annotations.iter().enumerate() {
        let pad = if i == 0 { "" } else { "             " };
        lines.push_str(&format!("{pad}{key}: {}\n", shown(value)));
    }
    lines
}

fn gpus(view: &AgentView) -> String {
    if view.gpus.is_empty() {
        "-".into()
    } else {
        shown(&view.gpus.join("; "))
    }
}

/// Age of an RFC 3339 timestamp, like "12s" or "3h".
pub(crate) fn age(rfc3339: &str) -> String {
    match humantime::parse_rfc3339(rfc3339) {
        Ok(t) => age_of(t),
        Err(_) => rfc3339.to_owned(),
    }
}

/// How long ago `ms` (unix milliseconds) was.
pub(crate) fn age_ms(ms: u64) -> String {
    age_of(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

fn age_of(t: std::time::SystemTime) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    format!("{:.1} GiB", n as f64 / GIB)
}

/// `ternctl get agents`.
pub fn agents(list: &[AgentView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok("No agents enrolled. Create a token with `ternctl token create` and run `tern-agent join`.\n".into());
    }
    let wide = format == Format::Wide;
    let mut header = vec!["NAME", "STATUS", "LABELS", "VERSION", "GPUS", "LAST SEEN"];
    if wide {
        header.extend(["ID", "CORES", "MEMORY", "DISK FREE", "FIRST SEEN"]);
    }
    let mut t = table(&header);
    for a in list {
        let mut row = vec![
            a.name.clone(),
            status(a),
            label_list(&a.labels),
            if a.version.is_empty() {
                "-".into()
            } else {
                shown(&a.version)
            },
            gpus(a),
            age(&a.last_seen),
        ];
        if wide {
            row.extend([
                a.id.clone(),
                a.capacity.cores.to_string(),
                bytes(a.capacity.memory_bytes),
                bytes(a.capacity.disk_free_bytes),
                age(&a.first_seen),
            ]);
        }
        t.add_row(row);
    }
    Ok(format!("{t}\n"))
}

/// The status column, with kubectl's habit of naming a condition after a comma.
fn status(a: &AgentView) -> String {
    if a.revoked.is_some() {
        format!("{},Revoked", a.status)
    } else if a.identity_problem.is_some() {
        format!("{},CertificateExpired", a.status)
    } else {
        a.status.to_string()
    }
}

/// `ternctl get tokens`.
pub fn tokens(list: &[TokenView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok("No unredeemed tokens.\n".into());
    }
    let mut t = table(&["ID", "LABELS", "CREATED", "EXPIRES"]);
    for token in list {
        let labels = tern_proto::labels::format(&token.labels);
        t.add_row(vec![
            token.id.clone(),
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
            age(&token.created),
            if token.expired {
                format!("expired {}", token.expires)
            } else {
                token.expires.clone()
            },
        ]);
    }
    Ok(format!("{t}\n"))
}

/// `ternctl get replicas`: address, leader or not, agents connected, lag.
pub fn replicas(list: &[ReplicaView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok("No replicas have announced themselves.\n".into());
    }
    let wide = format == Format::Wide;
    let mut header = vec!["NAME", "STATUS", "LEADER", "AGENTS", "ADDRESS", "LAG"];
    if wide {
        header.extend(["API", "EPOCH", "VERSION", "AGE"]);
    }
    let mut t = table(&header);
    for r in list {
        let mut row = vec![
            r.name.clone(),
            r.status.clone(),
            if r.leader { "yes" } else { "-" }.into(),
            r.agents_connected.to_string(),
            if r.agents_address.is_empty() {
                "-".into()
            } else {
                r.agents_address.clone()
            },
            format!("{:.1}s", r.lag_ms as f64 / 1000.0),
        ];
        if wide {
            row.extend([
                r.api_address.clone(),
                r.epoch.map_or("-".into(), |e| e.to_string()),
                r.version.clone(),
                age(&r.started),
            ]);
        }
        t.add_row(row);
    }
    Ok(format!("{t}\n"))
}

/// `ternctl describe agent`.
pub fn agent(a: &AgentView, format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(a, format)? {
        return Ok(text);
    }
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12}{v}\n"));
    line("Name:", a.name.clone());
    line("ID:", a.id.clone());
    line("Status:", status(a));
    line("Labels:", label_list(&a.labels));
    line("Version:", shown(&a.version));
    line("Address:", a.address.clone().unwrap_or_else(|| "-".into()));
    line("First seen:", a.first_seen.clone());
    line(
        "Last seen:",
        format!("{} ({})", a.last_seen, age(&a.last_seen)),
    );
    line("Cores:", a.capacity.cores.to_string());
    line("Memory:", bytes(a.capacity.memory_bytes));
    line("Disk free:", bytes(a.capacity.disk_free_bytes));
    if a.capacity.gpus.is_empty() {
        line("GPUs:", "none".into());
    } else {
        let mut t = table(&["GPU", "BACKEND", "TYPE", "DRIVER"]);
        for g in &a.capacity.gpus {
            t.add_row(vec![
                shown(&g.name),
                shown(&g.backend),
                shown(&g.device_type),
                shown(&g.driver),
            ]);
        }
        out.push_str(&format!("GPUs:\n{t}\n"));
    }
    out.push_str(&format!(
        "Generation: desired {}, applied {}\n",
        revision(a.desired_generation),
        revision(a.applied_generation)
    ));
    if let Some(why) = &a.refused {
        out.push_str(&format!("Refused:    {}\n", shown(why)));
    }
    out.push_str(&format!(
        "Cert until: {}\n",
        a.certificate_expires.as_deref().unwrap_or("-")
    ));
    if let Some(problem) = &a.identity_problem {
        out.push_str(&format!("Identity:   {}\n", shown(problem)));
    }
    for warning in &a.warnings {
        out.push_str(&format!("Warning:    {}\n", shown(warning)));
    }
    if !a.pipelines.is_empty() {
        let mut t = table(&["PIPELINE", "DESIRED", "SERVING", "PHASE", "MESSAGE"]);
        for p in &a.pipelines {
            t.add_row(vec![
                shown(&p.name),
                revision(p.desired),
                revision(p.serving),
                p.phase.clone().unwrap_or_else(|| "-".into()),
                shown(&p.message),
            ]);
        }
        out.push_str(&format!("Pipelines:\n{t}\n"));
    }
    Ok(out)
}

fn size(n: u64) -> String {
    match n {
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => bytes(n),
    }
}

/// `ternctl get releases`.
pub fn releases(list: &[ReleaseView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok(
            "No releases. Sign an artifact with `ternctl sign` and upload it with `ternctl push`.\n"
                .into(),
        );
    }
    let mut t = table(&[
        "NAME", "VERSION", "KIND", "DIGEST", "SIZE", "UPLOADED", "SIGNERS", "CREATED", "EXPIRES",
    ]);
    for r in list {
        let uploaded = if r.complete {
            "yes".to_owned()
        } else {
            format!("{}%", r.uploaded * 100 / r.size.max(1))
        };
        t.add_row(vec![
            shown(&r.name),
            r.version.to_string(),
            r.kind.to_string(),
            r.digest.short(),
            size(r.size),
            uploaded,
            r.signers.len().to_string(),
            age(&r.created),
            r.expires.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    Ok(format!("{t}\n"))
}

/// `ternctl trust show`.
pub fn trust_root(doc: &SignedTrustRoot, format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(doc, format)? {
        return Ok(text);
    }
    let root = &doc.signed;
    let mut t = table(&["ROLE", "KEY ID", "PUBLIC KEY"]);
    for k in &root.root_keys {
        t.add_row(vec!["root".into(), k.id(), hex_key(k)]);
    }
    for k in &root.publishers {
        t.add_row(vec!["publisher".into(), k.id(), hex_key(k)]);
    }
    Ok(format!(
        "Version:         {}\nRoot threshold:  {} of {}\nRelease threshold: {} of {}\nExpires:         {}\n{t}\n",
        root.version,
        root.root_threshold,
        root.root_keys.len(),
        root.threshold,
        root.publishers.len(),
        root.expires_ms
            .map_or_else(|| "never".to_owned(), tern_clock::rfc3339)
    ))
}

fn hex_key(k: &tern_proto::signing::PublicKey) -> String {
    k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON or YAML of anything (the table form is the caller's).
pub fn structured_any<T: Serialize + ?Sized>(value: &T, format: Format) -> anyhow::Result<String> {
    Ok(structured(value, format)?.unwrap_or_default())
}

/// `ternctl get pipelines`.
pub fn pipelines(list: &[PipelineView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok("No pipelines. Apply one with `ternctl apply -f FILE`.\n".into());
    }
    let wide = format == Format::Wide;
    let mut header = vec!["NAME", "REVISION", "STEPS", "DEPLOYMENTS", "UPDATED"];
    if wide {
        header.push("LABELS");
    }
    let mut t = table(&header);
    for p in list {
        let mut row = vec![
            p.name.clone(),
            p.revision.to_string(),
            p.steps
                .iter()
                .map(|s| format!("{}={}", s.step, s.reference))
                .collect::<Vec<_>>()
                .join(" "),
            if p.deployments.is_empty() {
                "-".into()
            } else {
                p.deployments.join(",")
            },
            age(&p.updated),
        ];
        if wide {
            row.push(label_list(&p.labels));
        }
        t.add_row(row);
    }
    Ok(format!("{t}\n"))
}

fn revision(r: Option<u64>) -> String {
    r.map(|r| r.to_string()).unwrap_or_else(|| "-".into())
}

/// `ternctl get deployments`.
pub fn deployments(list: &[DeploymentView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok("No deployments. Apply one with `ternctl apply -f FILE`.\n".into());
    }
    let wide = format == Format::Wide;
    let mut header = vec![
        "NAME", "PIPELINE", "SELECTOR", "STRATEGY", "REVISION", "ROLLOUT", "WAVE", "SERVING",
    ];
    if wide {
        header.push("LABELS");
    }
    let mut t = table(&header);
    for d in list {
        let (phase, target, wave, serving) = match &d.rollout {
            Some(r) => (
                r.phase.clone(),
                r.target_revision.to_string(),
                format!("{}/{}", r.wave, r.waves),
                format!(
                    "{}/{}",
                    r.agents
                        .iter()
                        .filter(|a| a.serving == Some(r.target_revision))
                        .count(),
                    r.agents.len()
                ),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let mut row = vec![
            d.name.clone(),
            d.pipeline.clone(),
            if d.selector.is_empty() {
                "(all)".into()
            } else {
                d.selector.to_string()
            },
            d.strategy.clone(),
            target,
            phase,
            wave,
            serving,
        ];
        if wide {
            row.push(label_list(&d.labels));
        }
        t.add_row(row);
    }
    Ok(format!("{t}\n"))
}

/// `ternctl describe deployment`: its labels, annotations and selector, then its rollout.
pub fn deployment(d: &DeploymentView, format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(d, format)? {
        return Ok(text);
    }
    let selector = if d.selector.is_empty() {
        "(every agent)".to_owned()
    } else {
        d.selector.to_string()
    };
    let mut out = format!(
        "Name:        {}\nLabels:      {}\nAnnotations: {}Selector:    {selector}\n",
        d.name,
        label_list(&d.labels),
        annotation_lines(&d.annotations),
    );
    out.push_str(&rollout(d, format)?);
    Ok(out)
}

/// `ternctl rollout status|pause|resume|undo`.
pub fn rollout(d: &DeploymentView, format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(d, format)? {
        return Ok(text);
    }
    let Some(r) = &d.rollout else {
        return Ok(format!("Deployment {} has no rollout yet.\n", d.name));
    };
    let mut out = format!(
        "Deployment:  {}\nPipeline:    {} revision {} (from {})\nStrategy:    {}, wave {} of {}\nPhase:       {}{}\nStarted:     {} ({})\n",
        d.name,
        d.pipeline,
        r.target_revision,
        revision(r.previous_revision),
        d.strategy,
        r.wave,
        r.waves,
        r.phase,
        r.reason
            .as_ref()
            .map(|why| format!(": {}", shown(why)))
            .unwrap_or_default(),
        r.started,
        age(&r.started),
    );
    let mut t = table(&[
        "AGENT",
        "CONNECTED",
        "DESIRED",
        "SERVING",
        "PHASE",
        "EXITS",
        "MESSAGE",
    ]);
    for a in &r.agents {
        let message = if a.left_out {
            format!("left out: offline past the grace. {}", a.message)
        } else if a.exits > 0 && a.message.is_empty() {
            format!(
                "exited {} times on revision {}: {}",
                a.exits, r.target_revision, a.exit_reason
            )
        } else {
            a.message.clone()
        };
        t.add_row(vec![
            a.name.clone(),
            if a.connected { "yes" } else { "no" }.into(),
            revision(a.desired),
            revision(a.serving),
            a.phase.clone().unwrap_or_else(|| "-".into()),
            if a.exits > 0 {
                a.exits.to_string()
            } else {
                "-".into()
            },
            shown(message.trim()),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    if !r.history.is_empty() {
        out.push_str("History:\n");
        for (at, what) in &r.history {
            out.push_str(&format!("  {at}  {}\n", shown(what)));
        }
    }
    Ok(out)
}

/// Requests per second, with two decimals below 10 (a quiet pipeline is not 0.0).
fn rate(rps: f64) -> String {
    if rps < 10.0 {
        format!("{rps:.2}")
    } else {
        format!("{rps:.1}")
    }
}

fn millis(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{ms:.2}ms")
    }
}

fn span(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.round() as u64)).to_string()
}

/// `ternctl top pipelines`: a row per pipeline, then a row per step.
pub fn top_pipelines(rows: &[PipelineTop], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(rows, format)? {
        return Ok(text);
    }
    if rows.is_empty() {
        return Ok("No pipelines. Apply one with `ternctl apply -f FILE`.\n".into());
    }
    let mut t = table(&[
        "PIPELINE", "REVISION", "REQUESTS", "ERRORS", "RPS", "P50", "P95", "P99", "WINDOW",
    ]);
    for p in rows {
        t.add_row(vec![
            shown(&p.pipeline),
            if p.revision == 0 {
                "-".into()
            } else {
                p.revision.to_string()
            },
            p.requests.to_string(),
            p.errors.to_string(),
            rate(p.rps),
            millis(p.p50_ms),
            millis(p.p95_ms),
            millis(p.p99_ms),
            span(p.window_seconds),
        ]);
        for s in &p.steps {
            let place = if s.device.is_empty() {
                s.kind.clone()
            } else {
                format!("{} on {}", s.kind, shown(&s.device))
            };
            t.add_row(vec![
                format!("  {} ({place})", shown(&s.step)),
                String::new(),
                s.requests.to_string(),
                s.errors.to_string(),
                rate(s.rps),
                millis(s.p50_ms),
                millis(s.p95_ms),
                millis(s.p99_ms),
                String::new(),
            ]);
        }
    }
    Ok(format!("{t}\n"))
}

/// `ternctl top agents`.
pub fn top_agents(rows: &[AgentTop], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(rows, format)? {
        return Ok(text);
    }
    if rows.is_empty() {
        return Ok("No agents enrolled.\n".into());
    }
    let mut t = table(&[
        "NAME",
        "STATUS",
        "CPU",
        "MEMORY",
        "DISK FREE",
        "CACHE",
        "GPU",
        "RPS",
        "ERRORS",
        "P99",
        "BUFFERED",
        "DROPPED",
        "REPORTED",
    ]);
    for a in rows {
        let reported = a.reported_ms > 0;
        let dash = || "-".to_owned();
        let gpu = if a.gpus.is_empty() {
            dash()
        } else {
            a.gpus
                .iter()
                .zip(a.gpu_busy_percent.iter().chain(std::iter::repeat(&None)))
                .map(|(name, busy)| match busy {
                    Some(b) => format!("{} {b:.0}%", shown(name)),
                    None => shown(name),
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        t.add_row(vec![
            shown(&a.name),
            a.status.to_string(),
            if reported {
                format!("{:.0}%", a.cpu_percent)
            } else {
                dash()
            },
            if reported {
                format!(
                    "{}/{}",
                    size(a.memory_used_bytes),
                    size(a.memory_total_bytes)
                )
            } else {
                dash()
            },
            if reported {
                size(a.disk_free_bytes)
            } else {
                dash()
            },
            if reported {
                size(a.cache_bytes)
            } else {
                dash()
            },
            gpu,
            rate(a.rps),
            a.errors.to_string(),
            if a.p99_ms > 0.0 {
                millis(a.p99_ms)
            } else {
                dash()
            },
            size(a.buffered_bytes),
            a.dropped_batches.to_string(),
            if reported {
                age_ms(a.reported_ms)
            } else {
                "never".into()
            },
        ]);
    }
    Ok(format!("{t}\n"))
}

pub fn experiment(view: &ExperimentView, format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(view, format)? {
        return Ok(text);
    }
    let mut out = format!(
        "Deployment {} (pipeline {} revision {}), last {}\n",
        shown(&view.deployment),
        shown(&view.pipeline),
        view.revision,
        span(view.window_seconds)
    );
    let mut t = table(&[
        "VARIANT",
        "WEIGHT",
        "SHARE",
        "REQUESTS",
        "ERRORS",
        "P50",
        "P95",
        "P99",
        "OUTPUT PSI",
    ]);
    for (i, v) in view.variants.iter().enumerate() {
        let psi = if i == 0 {
            "control".to_owned()
        } else {
            v.outputs
                .iter()
                .filter_map(|o| o.psi_vs_control)
                .max_by(f64::total_cmp)
                .map_or("-".into(), |p| format!("{p:.3} (max)"))
        };
        t.add_row(vec![
            shown(&v.variant),
            format!("{}%", v.weight),
            format!("{:.1}%", v.share),
            v.requests.to_string(),
            format!("{} ({:.2}%)", v.errors, v.error_rate * 100.0),
            millis(v.p50_ms),
            millis(v.p95_ms),
            millis(v.p99_ms),
            psi,
        ]);
    }
    out.push_str(&format!("{t}\n"));
    Ok(out)
}
