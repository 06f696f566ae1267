//! `get`'s output formats (tables, YAML, JSON, names), for a batch of objects and for the
//! objects a watch reports one by one.

use std::{io::Write, time::SystemTime};

use serde_json::{Value, json};
use skiff_api::{Object, ResourceInfo};

use crate::{
    cli::OutputFormat,
    error::Result,
    resource::name_of,
    table::{self, Aligner, TableOptions},
};

/// How objects are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl From<Option<OutputFormat>> for Format {
    fn from(o: Option<OutputFormat>) -> Format {
        match o {
            None => Format::Table,
            Some(OutputFormat::Wide) => Format::Wide,
            Some(OutputFormat::Yaml) => Format::Yaml,
            Some(OutputFormat::Json) => Format::Json,
            Some(OutputFormat::Name) => Format::Name,
        }
    }
}

impl Format {
    /// Whether nothing to print should be said on stderr (a YAML or JSON reader wants an empty
    /// List instead).
    pub fn says_when_empty(self) -> bool {
        matches!(self, Format::Table | Format::Wide | Format::Name)
    }
}

/// Several objects as one document: a `v1` `List`, as kubectl prints them.
pub fn list_value(objects: &[Object]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": objects.iter().map(Object::to_value).collect::<Vec<_>>(),
        "metadata": { "resourceVersion": "" },
    })
}

/// A document as YAML, ending in a newline.
pub fn yaml(value: &Value) -> Result<String> {
    let mut text = serde_norway::to_string(value)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A document as indented JSON, ending in a newline.
pub fn json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// Prints objects in one format, keeping what a watch needs between events: whether the
/// header is out, the column widths so far, whether a YAML document came before.
#[derive(Debug)]
pub struct Printer {
    format: Format,
    opts: TableOptions,
    no_headers: bool,
    aligner: Aligner,
    header_printed: bool,
    documents: usize,
}

impl Printer {
    pub fn new(
        format: Format,
        all_namespaces: bool,
        show_labels: bool,
        no_headers: bool,
    ) -> Printer {
        Printer {
            format,
            opts: TableOptions {
                wide: format == Format::Wide,
                all_namespaces,
                show_labels,
            },
            no_headers,
            aligner: Aligner::default(),
            header_printed: false,
            documents: 0,
        }
    }

    /// The result of a `get`: a table per kind (in the order kinds first appear), names, or for
    /// YAML and JSON the object itself when `single`, else a List.
    pub fn batch(
        &mut self,
        objects: &[Object],
        single: bool,
        now: SystemTime,
        out: &mut dyn Write,
    ) -> Result<()> {
        match self.format {
            Format::Table | Format::Wide => {
                let mut groups: Vec<(&'static ResourceInfo, Vec<&Object>)> = Vec::new();
                for o in objects {
                    match groups.iter_mut().find(|(info, _)| *info == o.info()) {
                        Some((_, members)) => members.push(o),
                        None => groups.push((o.info(), vec![o])),
                    }
                }
                for (i, (info, members)) in groups.into_iter().enumerate() {
                    if i > 0 {
                        writeln!(out)?;
                        // Each kind's table has its own columns.
                        self.aligner = Aligner::default();
                        self.header_printed = false;
                    }
                    let header = table::header(info, self.opts);
                    let rows: Vec<Vec<String>> = members
                        .iter()
                        .map(|o| table::row(o, self.opts, now))
                        .collect();
                    if !self.no_headers {
                        self.aligner.fit(std::iter::once(&header));
                    }
                    self.aligner.fit(&rows);
                    if !self.no_headers {
                        writeln!(out, "{}", self.aligner.line(&header))?;
                        self.header_printed = true;
                    }
                    for row in &rows {
                        writeln!(out, "{}", self.aligner.line(row))?;
                    }
                }
            }
            Format::Name => {
                for o in objects {
                    writeln!(out, "{}", name_of(o))?;
                }
            }
            Format::Yaml | Format::Json => {
                let value = match objects {
                    [one] if single => one.to_value(),
                    _ => list_value(objects),
                };
                self.document(&value, out)?;
            }
        }
        out.flush()?;
        Ok(())
    }

    /// One object as a watch reports it: a table row (the header first if none was printed),
    /// a name, or a YAML or JSON document.
    pub fn event(&mut self, object: &Object, now: SystemTime, out: &mut dyn Write) -> Result<()> {
        match self.format {
            Format::Table | Format::Wide => {
                let row = table::row(object, self.opts, now);
                if !self.header_printed && !self.no_headers {
                    let header = table::header(object.info(), self.opts);
                    self.aligner.fit([&header, &row]);
                    writeln!(out, "{}", self.aligner.line(&header))?;
                    self.header_printed = true;
                }
                self.aligner.fit([&row]);
                writeln!(out, "{}", self.aligner.line(&row))?;
            }
            Format::Name => writeln!(out, "{}", name_of(object))?,
            Format::Yaml | Format::Json => self.document(&object.to_value(), out)?,
        }
        out.flush()?;
        Ok(())
    }

    fn document(&mut self, value: &Value, out: &mut dyn Write) -> Result<()> {
        match self.format {
            Format::Yaml => {
                if self.documents > 0 {
                    writeln!(out, "---")?;
                }
                out.write_all(yaml(value)?.as_bytes())?;
            }
            _ => out.write_all(json(value).as_bytes())?,
        }
        self.documents += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use skiff_api::{
        Kind, ObjectMeta,
        kinds::{Deployment, Pod},
        meta::time,
    };

    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000)
    }

    fn pod(name: &str) -> Object {
        Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                creation_timestamp: Some(time::format(now() - Duration::from_secs(120))),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
        .into_object()
    }

    fn deployment(name: &str) -> Object {
        Deployment {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        }
        .into_object()
    }

    fn print(format: Format, objects: &[Object], single: bool) -> String {
        let mut out = Vec::new();
        Printer::new(format, false, false, false)
            .batch(objects, single, now(), &mut out)
            .expect("prints");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn the_name_form_is_kind_slash_name_with_the_group() {
        assert_eq!(
            print(Format::Name, &[pod("web-1"), deployment("web")], false),
            "pod/web-1\ndeployment.apps/web\n"
        );
    }

    #[test]
    fn several_objects_print_as_a_list_and_one_named_object_as_itself() {
        let list = print(Format::Yaml, &[pod("a"), pod("b")], false);
        let value: Value = serde_norway::from_str(&list).expect("yaml");
        assert_eq!(value["kind"], "List");
        assert_eq!(value["items"][1]["metadata"]["name"], "b");
        assert_eq!(value["items"][0]["kind"], "Pod");

        let one = print(Format::Json, &[pod("a")], true);
        let value: Value = serde_json::from_str(&one).expect("json");
        assert_eq!(value["kind"], "Pod");
        assert_eq!(value["apiVersion"], "v1");

        let listed_one = print(Format::Json, &[pod("a")], false);
        let value: Value = serde_json::from_str(&listed_one).expect("json");
        assert_eq!(value["kind"], "List");
    }

    #[test]
    fn each_kind_gets_its_own_table() {
        let text = print(
            Format::Table,
            &[pod("web-1"), deployment("web"), pod("web-2")],
            false,
        );
        assert_eq!(
            text,
            "NAME    READY   STATUS    RESTARTS   AGE\n\
             web-1   0/0     Pending   0          2m\n\
             web-2   0/0     Pending   0          2m\n\
             \n\
             NAME   READY   UP-TO-DATE   AVAILABLE   AGE\n\
             web    0/1     0            0           <unknown>\n"
        );
    }

    #[test]
    fn watch_events_print_rows_without_repeating_the_header() {
        let mut out = Vec::new();
        let mut p = Printer::new(Format::Table, false, false, false);
        p.batch(&[pod("a")], false, now(), &mut out).expect("batch");
        p.event(&pod("b"), now(), &mut out).expect("event");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().filter(|l| l.starts_with("NAME")).count(), 1);
        assert!(
            text.ends_with("b      0/0     Pending   0          2m\n"),
            "{text}"
        );
    }

    #[test]
    fn a_watch_that_starts_empty_prints_the_header_with_the_first_event() {
        let mut out = Vec::new();
        let mut p = Printer::new(Format::Table, false, false, false);
        p.batch(&[], false, now(), &mut out).expect("batch");
        p.event(&pod("a"), now(), &mut out).expect("event");
        p.event(&pod("b"), now(), &mut out).expect("event");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("NAME   READY"), "{text}");
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn yaml_watch_events_are_separate_documents() {
        let mut out = Vec::new();
        let mut p = Printer::new(Format::Yaml, false, false, false);
        p.event(&pod("a"), now(), &mut out).expect("event");
        p.event(&pod("b"), now(), &mut out).expect("event");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.matches("\n---\n").count(), 1, "{text}");
    }
}
