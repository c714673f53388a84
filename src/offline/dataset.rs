//! Task records with per-model graded outcomes (JSON Lines, optionally gzip), as used by
//! `train`, `eval` and `replay`; and the stable hash split into train and held-out parts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

use crate::domain::features::fnv1a;
use serde::Deserialize;

/// One model's graded outcome on a task.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Outcome {
    /// Graded quality in [0, 1].
    pub score: f64,
    /// Input tokens, when known.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Output tokens, when known.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Cost in USD, when known.
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

/// One task with the outcomes of any number of models.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Record {
    /// Stable task id (used for the split).
    pub id: String,
    /// The task text.
    pub prompt: String,
    /// The caller's workflow label.
    #[serde(default)]
    pub workflow: String,
    /// Model id → outcome.
    pub outcomes: BTreeMap<String, Outcome>,
}

/// Which part of a data file to use; as text ([`FromStr`](std::str::FromStr), `Display`) `all`,
/// `train` or `holdout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Every record.
    All,
    /// Records whose id does not hash into the held-out fifth.
    Train,
    /// The held-out fifth: `fnv1a(id) % 5 == 0`.
    Holdout,
}

impl Split {
    /// Every split, in the order they are listed.
    pub const ALL: [Split; 3] = [Split::All, Split::Train, Split::Holdout];

    /// Its name, as [`FromStr`](std::str::FromStr) reads it and `Display` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Split::All => "all",
            Split::Train => "train",
            Split::Holdout => "holdout",
        }
    }

    /// Whether a record id belongs to this split.
    pub fn contains(self, id: &str) -> bool {
        let held_out = fnv1a(id).is_multiple_of(5);
        match self {
            Split::All => true,
            Split::Train => !held_out,
            Split::Holdout => held_out,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no [`Split`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown split {0:?}: expected all, train or holdout")]
pub struct ParseSplitError(pub String);

impl std::str::FromStr for Split {
    type Err = ParseSplitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::ALL
            .into_iter()
            .find(|split| split.name() == s)
            .ok_or_else(|| ParseSplitError(s.to_string()))
    }
}

/// Keeps the records whose workflow matches `patterns`: a pattern is a workflow prefix
/// (`mmlu/high_school`), and one that starts with `!` excludes that prefix. With only
/// exclusions, everything else is kept; with none, everything.
pub fn filter_workflows(records: Vec<Record>, patterns: &[String]) -> Vec<Record> {
    let (exclude, include): (Vec<&str>, Vec<&str>) = patterns
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .partition(|p| p.starts_with('!'));
    records
        .into_iter()
        .filter(|r| {
            (include.is_empty() || include.iter().any(|p| r.workflow.starts_with(p)))
                && !exclude.iter().any(|p| r.workflow.starts_with(&p[1..]))
        })
        .collect()
}

/// Errors reading a data file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A line is not a valid record.
    #[error("{path}:{line}: {source}")]
    Parse {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// A score is outside [0, 1].
    #[error("{path}:{line}: score of model {model:?} is {score}, outside [0, 1]")]
    Score {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Model id.
        model: String,
        /// The bad score.
        score: f64,
    },
}

/// Reads all records of `split` from a `.jsonl` or `.jsonl.gz` file (gzip detected by content).
pub fn load(path: &str, split: Split) -> Result<Vec<Record>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_string(),
        source,
    };
    let mut file = BufReader::new(std::fs::File::open(path).map_err(io)?);
    let gz = file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line).map_err(|source| DataError::Parse {
            path: path.to_string(),
            line: i + 1,
            source,
        })?;
        for (model, o) in &record.outcomes {
            if !(0.0..=1.0).contains(&o.score) {
                return Err(DataError::Score {
                    path: path.to_string(),
                    line: i + 1,
                    model: model.clone(),
                    score: o.score,
                });
            }
        }
        if split.contains(&record.id) {
            out.push(record);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_partitions() {
        let ids: Vec<String> = (0..1000).map(|i| format!("task.{i}")).collect();
        let held = ids.iter().filter(|i| Split::Holdout.contains(i)).count();
        let train = ids.iter().filter(|i| Split::Train.contains(i)).count();
        assert_eq!(held + train, 1000);
        assert!((150..250).contains(&held), "{held}");
        assert!(Split::All.contains("x"));
    }

    #[test]
    fn split_names_read_back() {
        for split in Split::ALL {
            assert_eq!(split.to_string().parse::<Split>(), Ok(split));
        }
        assert_eq!(
            "Holdout".parse::<Split>(),
            Err(ParseSplitError("Holdout".into()))
        );
    }

    #[test]
    fn loads_plain_and_gzip_and_rejects_bad_scores() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("tw-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = r#"{"id":"a","prompt":"p","workflow":"w","outcomes":{"m":{"score":1.0,"cost_usd":0.1}}}"#;
        let plain = dir.join("d.jsonl");
        std::fs::write(&plain, format!("{line}\n\n")).unwrap();
        let gz = dir.join("d.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        writeln!(enc, "{line}").unwrap();
        enc.finish().unwrap();
        let a = load(plain.to_str().unwrap(), Split::All).unwrap();
        let b = load(gz.to_str().unwrap(), Split::All).unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].outcomes["m"].cost_usd, Some(0.1));
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, line.replace("1.0", "1.5")).unwrap();
        let err = load(bad.to_str().unwrap(), Split::All).unwrap_err();
        assert!(err.to_string().contains("outside [0, 1]"), "{err}");
    }
}
