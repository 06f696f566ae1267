//! How much of a corpus of public Kubernetes manifests Skiff accepts unchanged: every object of a
//! file must decode and pass the API server's defaulting and validation for the file to count.
//!
//! The corpus is a list of files (`repo<TAB>commit<TAB>path[<TAB>kinds]`, one per line) whose
//! copies sit under `<root>/<owner>+<name>/<path>`; the files themselves are other projects' and
//! are not kept in this repository.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use skiff_api::manifest;

/// One file's verdict.
#[derive(Debug)]
struct Verdict {
    project: String,
    /// Every document names a kind of Kubernetes' own API groups (a custom resource can never be
    /// accepted without CustomResourceDefinitions).
    builtin_only: bool,
    /// `None` when accepted, else the first reason, with indices and names taken out so that
    /// reasons can be counted.
    refusal: Option<String>,
}

/// Reads the corpus, judges every file and prints the shares and the commonest refusals.
pub fn main(list: &Path, root: &Path, top: usize) -> Result<()> {
    let text = fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    let mut verdicts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut cols = line.split('\t');
        let (Some(repo), Some(_commit), Some(path)) = (cols.next(), cols.next(), cols.next())
        else {
            bail!(
                "{}:{}: expected repo, commit and path",
                list.display(),
                n + 1
            );
        };
        let file: PathBuf = root.join(repo.replace('/', "+")).join(path);
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        verdicts.push(judge(repo, &bytes));
    }
    if verdicts.is_empty() {
        bail!("{} lists no files", list.display());
    }
    print(&verdicts, top);
    Ok(())
}

fn judge(project: &str, bytes: &[u8]) -> Verdict {
    let builtin_only = builtin_only(bytes);
    let refusal = match manifest::parse(bytes) {
        Err(e) => Some(reason(&e.to_string())),
        Ok(objects) => objects.into_iter().find_map(|mut o| {
            o.apply_defaults();
            o.validate()
                .first()
                .map(|e| reason(&format!("{}: {}", e.path, e.message)))
        }),
    };
    Verdict {
        project: project.to_owned(),
        builtin_only,
        refusal,
    }
}

/// Whether every document's apiVersion is in one of Kubernetes' own groups (the core group, or a
/// group without a dot, or one under `k8s.io`).
fn builtin_only(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let mut any = false;
    for doc in serde_norway::Deserializer::from_str(text) {
        let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else {
            return false;
        };
        let Some(api_version) = v.get("apiVersion").and_then(Value::as_str) else {
            continue;
        };
        any = true;
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        if !(group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io")) {
            return false;
        }
    }
    any
}

/// The refusal without what differs between files: document numbers and names, list indices,
/// quoted values.
fn reason(message: &str) -> String {
    let mut s = message.to_owned();
    // "document 2 (Deployment web): ..." -> "..."
    if s.starts_with("document ")
        && let Some(i) = s.find(": ")
    {
        s = s[i + 2..].to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' if chars.peek().is_some_and(char::is_ascii_digit) => {
                while chars.next().is_some_and(|c| c != ']') {}
                out.push_str("[*]");
            }
            '"' => {
                while chars.next().is_some_and(|c| c != '"') {}
                out.push_str("\"…\"");
            }
            _ => out.push(c),
        }
    }
    out.chars().take(160).collect()
}

fn print(verdicts: &[Verdict], top: usize) {
    let share = |v: &[&Verdict]| {
        let ok = v.iter().filter(|v| v.refusal.is_none()).count();
        (ok, v.len(), 100.0 * ok as f64 / v.len().max(1) as f64)
    };
    let all: Vec<&Verdict> = verdicts.iter().collect();
    let builtin: Vec<&Verdict> = verdicts.iter().filter(|v| v.builtin_only).collect();
    let (ok, n, pct) = share(&all);
    println!("accepted: {ok}/{n} files ({pct:.1}%)");
    let (ok, n, pct) = share(&builtin);
    println!("accepted, files of Kubernetes' own kinds only: {ok}/{n} ({pct:.1}%)");
    let mut projects: BTreeMap<&str, Vec<&Verdict>> = BTreeMap::new();
    for v in verdicts {
        projects.entry(&v.project).or_default().push(v);
    }
    for (p, vs) in &projects {
        let (ok, n, pct) = share(vs);
        println!("  {p}: {ok}/{n} ({pct:.1}%)");
    }
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for r in builtin.iter().filter_map(|v| v.refusal.as_deref()) {
        *reasons.entry(r).or_default() += 1;
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("commonest first refusals among files of Kubernetes' own kinds:");
    for (r, n) in reasons.into_iter().take(top) {
        println!("  {n:4}  {r}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_lose_document_names_indices_and_quoted_values() {
        assert_eq!(
            reason(
                "document 2 (Deployment web): spec.template.spec.containers[0].ports[12]: unknown field \"x\""
            ),
            "spec.template.spec.containers[*].ports[*]: unknown field \"…\""
        );
    }

    #[test]
    fn custom_resources_are_not_builtin_kinds() {
        assert!(builtin_only(b"apiVersion: apps/v1\nkind: Deployment\n"));
        assert!(builtin_only(
            b"apiVersion: v1\nkind: Service\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n"
        ));
        assert!(!builtin_only(
            b"apiVersion: v1\nkind: Service\n---\napiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\n"
        ));
    }

    #[test]
    fn a_file_counts_only_when_every_object_is_accepted() {
        let good = judge(
            "p",
            b"apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n",
        );
        assert!(good.refusal.is_none(), "{:?}", good.refusal);
        let bad = judge(
            "p",
            b"apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 0}]}\n",
        );
        assert!(bad.refusal.is_some());
    }
}
