//! Reading the Prometheus text format of `/metrics`.

use std::collections::BTreeMap;

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every pair in `labels` is among this sample's labels.
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }

    /// Whether this sample's labels are exactly `labels`, in any order.
    pub fn has_exactly(&self, labels: &[(&str, &str)]) -> bool {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.len() == labels.len() && self.labels == wanted
    }
}

/// Parses the Prometheus text exposition format (comments and malformed lines are skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let mut chars = after_brace.char_indices().peekable();
        loop {
            while matches!(chars.peek(), Some((_, c)) if *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    rest = &after_brace[i + 1..];
                    break;
                }
                None => return None,
                _ => {}
            }
            let mut key = String::new();
            loop {
                match chars.next()? {
                    (_, '=') => break,
                    (_, c) => key.push(c),
                }
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '"') => break,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the sample named `name` with exactly `labels`, from Prometheus text.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse_metrics(text)
        .into_iter()
        .find(|s| s.name == name && s.has_exactly(labels))
        .map(|s| s.value)
}
