//! Drift in `ternctl`: `baseline create` (from a sample CSV or the agents' window), and the
//! tables of `get baselines`, `get alerts` and `drift PIPELINE`.

use std::path::Path;

use anyhow::Context as _;
use tern_proto::api::{AlertView, BaselineView, PipelineDrift};
use tern_proto::drift::Baseline;

use crate::output::{Format, age_ms, shown, structured, table};

/// Sample values per feature from a CSV file: a header row, then one row per sample. Header
/// names that are feature names (`input:...`, `output:...`) are used as they are; with
/// `tensor`, column `i` is `input:TENSOR[i]` whatever its header says.
pub fn read_samples(path: &Path, tensor: Option<&str>) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let file = path.display();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines
        .next()
        .with_context(|| format!("{file}: empty, expected a header row"))?;
    let names: Vec<String> = header
        .split(',')
        .enumerate()
        .map(|(i, h)| {
            let h = h.trim();
            match tensor {
                Some(t) => Ok(format!("input:{t}[{i}]")),
                None if h.starts_with("input:") || h.starts_with("output:") => Ok(h.to_owned()),
                None => anyhow::bail!(
                    "{file}: column {} is `{h}`; name columns `input:TENSOR[i]` or pass --tensor TENSOR",
                    i + 1
                ),
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let mut columns: Vec<Vec<f32>> = vec![Vec::new(); names.len()];
    for (n, line) in lines {
        let cells: Vec<&str> = line.split(',').collect();
        anyhow::ensure!(
            cells.len() == names.len(),
            "{file}: line {}: {} values, expected {}",
            n + 1,
            cells.len(),
            names.len()
        );
        for (column, cell) in columns.iter_mut().zip(cells) {
            let value: f32 = cell.trim().parse().with_context(|| {
                format!("{file}: line {}: `{}` is not a number", n + 1, cell.trim())
            })?;
            column.push(value);
        }
    }
    Ok(names.into_iter().zip(columns).collect())
}

/// A baseline from a sample file, checked before it leaves the machine.
pub fn from_file(path: &Path, tensor: Option<&str>, bins: usize) -> anyhow::Result<Baseline> {
    let samples = read_samples(path, tensor)?;
    Baseline::from_samples(samples, bins)
        .with_context(|| format!("failed to build a baseline from {}", path.display()))
}

pub fn baselines(list: &[BaselineView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok("No baselines. Create one with `ternctl baseline create`.\n".into());
    }
    let mut t = table(&["BASELINE", "FEATURES", "SOURCE", "CREATED"]);
    for b in list {
        t.add_row(vec![
            format!("{}:{}", b.name, b.version),
            b.features.to_string(),
            shown(&b.source),
            age_ms(b.created_ms),
        ]);
    }
    Ok(format!("{t}\n"))
}

pub fn alerts(list: &[AlertView], format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(list, format)? {
        return Ok(text);
    }
    if list.is_empty() {
        return Ok("No alerts.\n".into());
    }
    let mut t = table(&[
        "STATE",
        "PIPELINE",
        "SCOPE",
        "FEATURE",
        "PSI",
        "THRESHOLD",
        "SINCE",
    ]);
    for a in list {
        t.add_row(vec![
            a.state.clone(),
            format!("{} (rev {})", shown(&a.pipeline), a.revision),
            shown(&a.scope),
            shown(&a.feature),
            format!("{:.3}", a.psi),
            format!("{:.2}", a.threshold),
            age_ms(a.since_ms),
        ]);
    }
    Ok(format!("{t}\n"))
}

pub fn pipeline_drift(drift: &PipelineDrift, format: Format) -> anyhow::Result<String> {
    if let Some(text) = structured(drift, format)? {
        return Ok(text);
    }
    let mut out = format!(
        "Pipeline {} revision {}, baseline {}, alert above PSI {:.2}, last {}s\n",
        shown(&drift.pipeline),
        drift.revision,
        drift
            .baseline
            .as_deref()
            .unwrap_or("none (collecting only)"),
        drift.alert_psi,
        drift.window_seconds
    );
    if drift.features.is_empty() {
        out.push_str("No feature distributions in the window yet.\n");
        return Ok(out);
    }
    let mut t = table(&["FEATURE", "VALUES", "MEAN", "PSI", "WORST AGENT"]);
    for f in &drift.features {
        let worst = f
            .agents
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(agent, psi)| format!("{} {psi:.3}", shown(agent)))
            .unwrap_or_else(|| "-".into());
        let psi = match f.psi {
            Some(p) if p > drift.alert_psi => format!("{p:.3} !"),
            Some(p) => format!("{p:.3}"),
            None => "-".into(),
        };
        t.add_row(vec![
            shown(&f.feature),
            f.count.to_string(),
            f.mean.map_or("-".into(), |m| format!("{m:.3}")),
            psi,
            worst,
        ]);
    }
    out.push_str(&format!("{t}\n"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_need_feature_names_or_a_tensor_and_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.csv");
        std::fs::write(&path, "a,b\n1,2\n3,4\n").expect("write");
        let e = read_samples(&path, None).expect_err("plain names");
        assert!(e.to_string().contains("--tensor"), "{e}");
        let samples = read_samples(&path, Some("x")).expect("with a tensor");
        assert_eq!(samples[1], ("input:x[1]".to_owned(), vec![2.0, 4.0]));
        std::fs::write(&path, "input:x[0]\n1\nseven\n").expect("write");
        let e = read_samples(&path, None).expect_err("not a number");
        assert!(e.to_string().contains("line 3"), "{e}");
    }
}
