//! Reading stored webhooks: files, folders (walked in a stable order), JSON lines, stdin.
//!
//! Each input yields items lazily, so a 100,000-line file is never held in memory whole.
//! A bad file, line or shape becomes an [`Item::Unreadable`] carrying its location; it never
//! stops the rest from being read.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One stored webhook, or the reason it could not be read.
#[derive(Debug)]
pub enum Item {
    /// A bare event body, exactly as Clerk sent it.
    Body(Vec<u8>),
    /// A recorded delivery: headers and body as received.
    Recorded {
        /// The delivery's headers (`svix-*` or `webhook-*`).
        headers: http::HeaderMap,
        /// The body as received.
        body: Vec<u8>,
    },
    /// Not readable as a webhook: the reason.
    Unreadable(String),
}

/// An item and where it came from (`path` or `path:line`).
#[derive(Debug)]
pub struct Located {
    /// `path`, `path:line` or `path[index]`.
    pub location: String,
    /// What was read.
    pub item: Item,
}

#[derive(Deserialize)]
struct RecordedDelivery {
    headers: std::collections::BTreeMap<String, serde_json::Value>,
    body: serde_json::Value,
}

/// Files a folder contributes: `.json`, `.jsonl`, `.ndjson`, but not `*.expected.json`.
fn replayable(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && !name.ends_with(".expected.json")
        && (name.ends_with(".json") || name.ends_with(".jsonl") || name.ends_with(".ndjson"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<Located>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(unreadable(
                dir.display().to_string(),
                format!("cannot read folder: {e}"),
            ));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, out, errors);
        } else if replayable(&path) {
            out.push(path);
        }
    }
}

fn unreadable(location: String, reason: String) -> Located {
    Located {
        location,
        item: Item::Unreadable(reason),
    }
}

/// Just enough of an object to tell a recorded delivery from a bare body, without building it.
#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "type")]
    event_type: Option<serde::de::IgnoredAny>,
    headers: Option<serde::de::IgnoredAny>,
    body: Option<serde::de::IgnoredAny>,
}

/// Classifies one JSON text, keeping a bare body's exact bytes.
fn classify_raw(raw: &[u8]) -> Item {
    if memchr::memmem::find(raw, b"\"headers\"").is_none() {
        return Item::Body(raw.to_vec());
    }
    classify_parsed(raw)
}

/// [`classify_raw`] for a text of its own: a bare body keeps its buffer.
fn classify_owned(raw: Vec<u8>) -> Item {
    if memchr::memmem::find(&raw, b"\"headers\"").is_none() {
        return Item::Body(raw);
    }
    classify_parsed(&raw)
}

/// A text that may be a recorded delivery. (The common case, a bare body, costs no parse:
/// only a recorded delivery has a "headers" key. A body that then fails to parse is
/// diagnosed by [`diagnose`].)
fn classify_parsed(raw: &[u8]) -> Item {
    match serde_json::from_slice::<Shape>(raw) {
        Ok(Shape {
            event_type: None,
            headers: Some(_),
            body: Some(_),
        }) => match serde_json::from_slice::<serde_json::Value>(raw) {
            Ok(value) => classify(value, None),
            Err(e) => Item::Unreadable(format!("invalid JSON: {e}")),
        },
        Ok(_) => Item::Body(raw.to_vec()),
        // Rare: say precisely what is wrong.
        Err(_) => match serde_json::from_slice::<serde_json::Value>(raw) {
            Ok(value) => classify(value, Some(raw)),
            Err(e) => Item::Unreadable(format!("invalid JSON: {e}")),
        },
    }
}

/// Classifies one JSON value: a recorded delivery or a bare body (`raw`, when the value
/// is the whole text, keeps the sender's exact bytes).
fn classify(value: serde_json::Value, raw: Option<&[u8]>) -> Item {
    let looks_recorded = value.get("headers").is_some()
        && value.get("body").is_some()
        && value.get("type").is_none();
    if looks_recorded {
        let recorded: RecordedDelivery = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => return Item::Unreadable(format!("recorded delivery: {e}")),
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in recorded.headers {
            let text = match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            match (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&text),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                _ => {
                    return Item::Unreadable(format!(
                        "recorded delivery: header {name:?} is not a valid header"
                    ))
                }
            }
        }
        let body = match recorded.body {
            serde_json::Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        return Item::Recorded { headers, body };
    }
    if !value.is_object() {
        return Item::Unreadable("not a webhook body (expected a JSON object)".into());
    }
    match raw {
        Some(raw) => Item::Body(raw.to_vec()),
        None => Item::Body(value.to_string().into_bytes()),
    }
}

/// Items of one whole JSON document: an object, or an array of objects.
fn document(location: &str, bytes: &[u8]) -> Vec<Located> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return vec![Located {
            location: location.to_owned(),
            item: classify_raw(bytes),
        }];
    }
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Array(values)) => values
            .into_iter()
            .enumerate()
            .map(|(i, v)| Located {
                location: format!("{location}[{i}]"),
                item: classify(v, None),
            })
            .collect(),
        Ok(value) => vec![Located {
            location: location.to_owned(),
            item: classify(value, Some(bytes)),
        }],
        Err(e) => vec![unreadable(
            location.to_owned(),
            format!("invalid JSON: {e}"),
        )],
    }
}

/// Items of JSON lines, read lazily.
fn lines(
    location: String,
    reader: impl BufRead + Send + 'static,
) -> impl Iterator<Item = Located> + Send {
    let mut number = 0usize;
    let mut reader = reader;
    let mut done = false;
    std::iter::from_fn(move || loop {
        if done {
            return None;
        }
        // Room for a typical Clerk body, so that reading one rarely grows the buffer.
        let mut line = Vec::with_capacity(4_096);
        number += 1;
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(Located {
                    location: format!("{location}:{number}"),
                    item: classify_owned(line),
                });
            }
            Err(e) => {
                done = true;
                return Some(unreadable(
                    format!("{location}:{number}"),
                    format!("cannot read: {e}"),
                ));
            }
        }
    })
}

fn is_json_lines(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "ndjson")
    )
}

/// Everything the given paths hold, in order: `-` is standard input (JSON lines, or one document).
pub fn read(paths: &[PathBuf]) -> Box<dyn Iterator<Item = Located> + Send> {
    let mut files = Vec::new();
    let mut early = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" || !path.is_dir() {
            files.push(path.clone());
        } else {
            walk(path, &mut files, &mut early);
        }
    }
    let rest = files
        .into_iter()
        .flat_map(|path| -> Box<dyn Iterator<Item = Located> + Send> {
            if path.as_os_str() == "-" {
                let mut all = Vec::new();
                if let Err(e) = std::io::stdin().lock().read_to_end(&mut all) {
                    return Box::new(std::iter::once(unreadable(
                        "-".into(),
                        format!("cannot read stdin: {e}"),
                    )));
                }
                return match serde_json::from_slice::<serde_json::Value>(&all) {
                    Ok(_) => Box::new(document("-", &all).into_iter()),
                    Err(_) => {
                        Box::new(lines("-".into(), BufReader::new(std::io::Cursor::new(all))))
                    }
                };
            }
            let location = path.display().to_string();
            if is_json_lines(&path) {
                return match File::open(&path) {
                    Ok(file) => Box::new(lines(location, BufReader::new(file))),
                    Err(e) => Box::new(std::iter::once(unreadable(
                        location,
                        format!("cannot open: {e}"),
                    ))),
                };
            }
            match std::fs::read(&path) {
                Ok(bytes) => Box::new(document(&location, &bytes).into_iter()),
                Err(e) => Box::new(std::iter::once(unreadable(
                    location,
                    format!("cannot open: {e}"),
                ))),
            }
        });
    Box::new(early.into_iter().chain(rest))
}

/// Why a bare body that is not a valid event was refused: not JSON at all, not an object,
/// or an object that is not an event (`error`).
pub fn diagnose(raw: &[u8], error: &crate::domain::EventError) -> String {
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Err(e) => format!("invalid JSON: {e}"),
        Ok(value) if !value.is_object() => "not a webhook body (expected a JSON object)".into(),
        Ok(_) => format!("invalid event: {error}"),
    }
}
