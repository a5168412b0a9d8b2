//! `-o jsonpath=TEMPLATE`: kubectl's JSONPath templates over a resource's JSON. Text outside
//! braces is printed as it is; inside braces, a path (`{.items[*].name}`, `{.labels.site}`,
//! `{.items[0]}`, `{$.items[-1:]}` is not supported), a string literal (`{"\n"}`), or
//! `{range PATH}...{end}` repeating what is between for each value the path gives. Paths take
//! fields (`.name`, `['name']`), indexes (`[0]`, `[-1]`) and wildcards (`[*]`, `.*`). Several
//! values print separated by spaces; strings print without quotes, the rest as JSON.

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Node>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Path(Vec<Segment>),
    Range(Vec<Segment>, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(i64),
    Wildcard,
}

/// Why a template is malformed or a path cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("jsonpath: {0}")]
pub struct JsonPathError(String);

fn error(message: impl Into<String>) -> JsonPathError {
    JsonPathError(message.into())
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, JsonPathError> {
        let mut stack: Vec<(Vec<Segment>, Vec<Node>)> = Vec::new();
        let mut nodes = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                nodes.push(Node::Text(rest.to_owned()));
                break;
            };
            if open > 0 {
                nodes.push(Node::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = closing_brace(after)
                .ok_or_else(|| error(format!("`{{` without its `}}` in `{text}`")))?;
            let inner = after[..close].trim();
            rest = &after[close + 1..];
            if inner == "end" {
                let (path, outer) = stack
                    .pop()
                    .ok_or_else(|| error("`{end}` without its `{range ...}`"))?;
                let body = std::mem::replace(&mut nodes, outer);
                nodes.push(Node::Range(path, body));
            } else if let Some(path) = inner.strip_prefix("range ") {
                stack.push((path_segments(path.trim())?, std::mem::take(&mut nodes)));
            } else if let Some(literal) = inner.strip_prefix('"') {
                let literal = literal
                    .strip_suffix('"')
                    .ok_or_else(|| error(format!("unterminated string `{inner}`")))?;
                nodes.push(Node::Text(unescape(literal)));
            } else {
                nodes.push(Node::Path(path_segments(inner)?));
            }
        }
        if !stack.is_empty() {
            return Err(error("`{range ...}` without its `{end}`"));
        }
        Ok(Template(nodes))
    }

    /// The template applied to `value`.
    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.0, value, &mut out);
        out
    }
}

/// Where the `}` that closes a `{` is, outside string literals.
fn closing_brace(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn path_segments(path: &str) -> Result<Vec<Segment>, JsonPathError> {
    let mut rest = path
        .strip_prefix('$')
        .or_else(|| path.strip_prefix('@'))
        .unwrap_or(path);
    let mut segments = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            if after.starts_with('.') {
                return Err(error(format!(
                    "recursive descent (`..`) is not supported: `{path}`"
                )));
            }
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            segments.push(match field {
                "" if end == after.len() => break,
                "" => return Err(error(format!("an empty field in `{path}`"))),
                "*" => Segment::Wildcard,
                name => Segment::Field(name.to_owned()),
            });
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(']')
                .ok_or_else(|| error(format!("`[` without its `]` in `{path}`")))?;
            let inside = after[..end].trim();
            segments.push(if inside == "*" {
                Segment::Wildcard
            } else if let Some(name) = inside
                .strip_prefix('\'')
                .and_then(|n| n.strip_suffix('\''))
            {
                Segment::Field(name.to_owned())
            } else {
                Segment::Index(inside.parse().map_err(|_| {
                    error(format!(
                        "`[{inside}]` in `{path}`: an index, `*` or 'field' (slices and filters are not supported)"
                    ))
                })?)
            });
            rest = &after[end + 1..];
        } else {
            return Err(error(format!(
                "`{path}`: a path starts with `.`, `$.` or `@.`"
            )));
        }
    }
    Ok(segments)
}

/// Every value `segments` reach from `value`.
fn follow<'a>(value: &'a Value, segments: &[Segment]) -> Vec<&'a Value> {
    let mut current = vec![value];
    for segment in segments {
        let mut next = Vec::new();
        for v in current {
            match (segment, v) {
                (Segment::Field(name), Value::Object(map)) => next.extend(map.get(name)),
                (Segment::Index(i), Value::Array(items)) => {
                    let at = if *i < 0 {
                        items.len().checked_sub(i.unsigned_abs() as usize)
                    } else {
                        Some(*i as usize)
                    };
                    next.extend(at.and_then(|at| items.get(at)));
                }
                (Segment::Wildcard, Value::Array(items)) => next.extend(items),
                (Segment::Wildcard, Value::Object(map)) => next.extend(map.values()),
                _ => {}
            }
        }
        current = next;
    }
    current
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render_nodes(nodes: &[Node], value: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(segments) => {
                let found: Vec<String> = follow(value, segments).into_iter().map(text).collect();
                out.push_str(&found.join(" "));
            }
            Node::Range(segments, body) => {
                for item in follow(value, segments) {
                    render_nodes(body, item, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, value: &Value) -> String {
        Template::parse(template)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
            .render(value)
    }

    #[test]
    fn renders_kubectl_templates() {
        let list = serde_json::json!({"kind": "List", "items": [
            {"name": "edge-1", "labels": {"site": "berlin"}, "gpus": 1},
            {"name": "edge-2", "labels": {"site": "oslo"}, "gpus": 0},
        ]});
        assert_eq!(render("{.items[*].name}", &list), "edge-1 edge-2");
        assert_eq!(render("{.items[0].labels.site}", &list), "berlin");
        assert_eq!(render("{.items[-1]['name']}", &list), "edge-2");
        assert_eq!(
            render(r#"{range .items[*]}{.name}={.gpus}{"\n"}{end}"#, &list),
            "edge-1=1\nedge-2=0\n"
        );
        assert_eq!(
            render("names: {$.items[*].name}!", &list),
            "names: edge-1 edge-2!"
        );
        assert_eq!(render("{.items[0].labels}", &list), r#"{"site":"berlin"}"#);
        assert_eq!(render("{.items[5].name}{.nothing}", &list), "");
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "{.items[*].name",
            "{range .items[*]}{.name}",
            "{end}",
            "{.items[1:2]}",
            "{items}",
            "{..name}",
            r#"{"open}"#,
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
