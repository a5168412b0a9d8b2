//! `tabular-prep`: one or more CSV rows, or a JSON object, → a standardized `fp32` feature
//! tensor `[N, F]`.
//!
//! Config:
//! ```json
//! {"columns": ["age", "income"], "means": [40, 50000], "stds": [12, 20000],
//!  "defaults": {"income": 50000}, "tensor": "input", "header": false}
//! ```
//! `columns` fixes the feature order; `means`/`stds` (optional, default 0/1) standardize each
//! feature; `defaults` fill missing values (a missing value without a default is an error).
//! CSV input (`text/csv`) is positional in `columns` order unless `header` is true, in which case
//! the first row names the columns. JSON input (`application/json`) is an object (one row) or an
//! array of objects; `null` counts as missing.

use std::collections::BTreeMap;

use serde::Deserialize;
use tern_plugin_sdk::{Payload, Step, StepError, Tensor, export_step, parse_config};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    #[serde(default)]
    means: Vec<f32>,
    #[serde(default)]
    stds: Vec<f32>,
    #[serde(default)]
    defaults: BTreeMap<String, f32>,
    #[serde(default = "default_tensor")]
    tensor: String,
    #[serde(default)]
    header: bool,
}

fn default_tensor() -> String {
    "input".into()
}

#[derive(Debug)]
pub struct TabularPrep {
    config: Config,
    means: Vec<f32>,
    stds: Vec<f32>,
}

impl TabularPrep {
    fn feature(&self, column: usize, value: Option<f32>) -> Result<f32, StepError> {
        let name = &self.config.columns[column];
        let raw = match value.or_else(|| self.config.defaults.get(name).copied()) {
            Some(v) => v,
            None => {
                return Err(StepError::invalid_input(format!(
                    "missing value for `{name}` and no default"
                )));
            }
        };
        Ok((raw - self.means[column]) / self.stds[column])
    }

    fn parse_number(column: &str, text: &str) -> Result<Option<f32>, StepError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        match text.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(StepError::invalid_input(format!(
                "`{column}`: `{text}` is not a finite number"
            ))),
        }
    }

    fn csv_rows(&self, data: &[u8]) -> Result<Vec<Vec<Option<f32>>>, StepError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(self.config.header)
            .flexible(true)
            .from_reader(data);
        // Where each configured column sits in a record.
        let positions: Vec<Option<usize>> = if self.config.header {
            let header = reader
                .headers()
                .map_err(|e| StepError::invalid_input(format!("CSV header: {e}")))?
                .clone();
            self.config
                .columns
                .iter()
                .map(|c| match header.iter().position(|h| h.trim() == c) {
                    Some(p) => Ok(Some(p)),
                    None => Err(StepError::invalid_input(format!(
                        "the CSV header has no column `{c}`"
                    ))),
                })
                .collect::<Result<_, _>>()?
        } else {
            (0..self.config.columns.len()).map(Some).collect()
        };
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| StepError::invalid_input(format!("CSV: {e}")))?;
            if !self.config.header && record.len() > self.config.columns.len() {
                return Err(StepError::invalid_input(format!(
                    "CSV row has {} fields, {} columns are configured",
                    record.len(),
                    self.config.columns.len()
                )));
            }
            let row = positions
                .iter()
                .zip(&self.config.columns)
                .map(|(pos, name)| match pos.and_then(|p| record.get(p)) {
                    Some(text) => Self::parse_number(name, text),
                    None => Ok(None),
                })
                .collect::<Result<_, _>>()?;
            rows.push(row);
        }
        Ok(rows)
    }

    fn json_rows(&self, data: &[u8]) -> Result<Vec<Vec<Option<f32>>>, StepError> {
        let value: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| StepError::invalid_input(format!("JSON: {e}")))?;
        let objects = match value {
            serde_json::Value::Object(o) => vec![o],
            serde_json::Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::Object(o) => Ok(o),
                    _ => Err(StepError::invalid_input("JSON array items must be objects")),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(StepError::invalid_input(
                    "JSON input must be an object or an array of objects",
                ));
            }
        };
        objects
            .iter()
            .map(|o| {
                self.config
                    .columns
                    .iter()
                    .map(|c| match o.get(c) {
                        None | Some(serde_json::Value::Null) => Ok(None),
                        Some(serde_json::Value::Number(n)) => match n.as_f64().map(|v| v as f32) {
                            Some(v) if v.is_finite() => Ok(Some(v)),
                            _ => Err(StepError::invalid_input(format!(
                                "`{c}`: {n} is not a finite f32"
                            ))),
                        },
                        Some(serde_json::Value::String(s)) => Self::parse_number(c, s),
                        Some(other) => Err(StepError::invalid_input(format!(
                            "`{c}`: {other} is not a number"
                        ))),
                    })
                    .collect()
            })
            .collect()
    }
}

impl Step for TabularPrep {
    fn configure(config: &str) -> Result<Self, StepError> {
        let config: Config = parse_config(config)?;
        let n = config.columns.len();
        if n == 0 {
            return Err(StepError::invalid_config(
                "`columns` must name at least one column",
            ));
        }
        let fill = |v: &[f32], default: f32, field: &str| -> Result<Vec<f32>, StepError> {
            match v.len() {
                0 => Ok(vec![default; n]),
                len if len == n => Ok(v.to_vec()),
                len => Err(StepError::invalid_config(format!(
                    "`{field}` has {len} values for {n} columns"
                ))),
            }
        };
        let means = fill(&config.means, 0.0, "means")?;
        let stds = fill(&config.stds, 1.0, "stds")?;
        if stds.iter().any(|s| *s == 0.0 || !s.is_finite()) || means.iter().any(|m| !m.is_finite())
        {
            return Err(StepError::invalid_config(
                "`means` must be finite, `stds` finite and non-zero",
            ));
        }
        if let Some(unknown) = config.defaults.keys().find(|k| !config.columns.contains(k)) {
            return Err(StepError::invalid_config(format!(
                "`defaults` names unknown column `{unknown}`"
            )));
        }
        Ok(Self {
            config,
            means,
            stds,
        })
    }

    fn process(&mut self, input: Payload) -> Result<Payload, StepError> {
        let blob = input.into_blob()?;
        let media = blob
            .media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let rows = match media.as_str() {
            "text/csv" | "text/plain" => self.csv_rows(&blob.data)?,
            "application/json" => self.json_rows(&blob.data)?,
            other => {
                return Err(StepError::unsupported(format!(
                    "media type `{other}`; expected text/csv or application/json"
                )));
            }
        };
        if rows.is_empty() {
            return Err(StepError::invalid_input("no rows in the input"));
        }
        let mut features = Vec::with_capacity(rows.len() * self.config.columns.len());
        for row in &rows {
            for (column, value) in row.iter().enumerate() {
                features.push(self.feature(column, *value)?);
            }
        }
        let shape = vec![rows.len() as u64, self.config.columns.len() as u64];
        Ok(Payload::Tensors(vec![Tensor::from_f32(
            &self.config.tensor,
            shape,
            &features,
        )]))
    }
}

export_step!(TabularPrep);

#[cfg(test)]
mod tests {
    use super::*;
    use tern_plugin_sdk::Blob;

    const CONFIG: &str = r#"{"columns": ["age", "income"], "means": [40, 50000], "stds": [10, 10000],
        "defaults": {"income": 50000}, "tensor": "features"}"#;

    fn run(config: &str, media: &str, body: &str) -> Result<Tensor, StepError> {
        let mut step = TabularPrep::configure(config)?;
        let out = step.process(Payload::Bytes(Blob::new(media, body.as_bytes().to_vec())))?;
        Ok(out.into_tensors()?.remove(0))
    }

    #[test]
    fn standardizes_csv_rows_in_column_order_with_defaults() {
        let t = run(CONFIG, "text/csv", "50,70000\n30,\n").expect("runs");
        assert_eq!(t.name, "features");
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(t.to_f32().expect("f32"), vec![1.0, 2.0, -1.0, 0.0]);
    }

    #[test]
    fn reads_csv_with_a_header_in_any_order() {
        let config = CONFIG.replace(r#""tensor""#, r#""header": true, "tensor""#);
        let t = run(&config, "text/csv", "income,age\n60000,20\n").expect("runs");
        assert_eq!(t.to_f32().expect("f32"), vec![-2.0, 1.0]);
    }

    #[test]
    fn reads_json_objects_and_arrays() {
        let t = run(CONFIG, "application/json", r#"{"age": 60, "income": null}"#).expect("runs");
        assert_eq!(t.to_f32().expect("f32"), vec![2.0, 0.0]);
        let t = run(
            CONFIG,
            "application/json",
            r#"[{"age": 40, "income": 40000}, {"age": "50"}]"#,
        )
        .expect("runs");
        assert_eq!(t.shape, vec![2, 2]);
    }

    #[test]
    fn refuses_missing_values_bad_numbers_and_bad_configs() {
        assert!(
            run(CONFIG, "text/csv", ",1\n").is_err(),
            "age has no default"
        );
        assert!(run(CONFIG, "text/csv", "abc,1\n").is_err());
        assert!(run(CONFIG, "text/csv", "NaN,1\n").is_err());
        assert!(run(CONFIG, "application/json", r#"{"age": 1e39}"#).is_err());
        let header = CONFIG.replace(r#""tensor""#, r#""header": true, "tensor""#);
        assert!(
            run(&header, "text/csv", "age,salary\n30,1\n").is_err(),
            "income is not in the header"
        );
        assert!(run(CONFIG, "text/csv", "1,2,3\n").is_err());
        assert!(run(CONFIG, "image/png", "x").is_err());
        assert!(TabularPrep::configure(r#"{"columns": []}"#).is_err());
        assert!(TabularPrep::configure(r#"{"columns": ["a"], "stds": [0]}"#).is_err());
        assert!(TabularPrep::configure(r#"{"columns": ["a"], "means": [1, 2]}"#).is_err());
        assert!(TabularPrep::configure(r#"{"columns": ["a"], "defaults": {"b": 1}}"#).is_err());
    }
}
